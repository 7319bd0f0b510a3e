//! Plain scalars read as Hydra reads them.
//!
//! Hydra loads YAML with PyYAML's YAML 1.1 rules, as OmegaConf sets them up: `yes`/`no`/`on`/
//! `off` are booleans, `0755` is octal, `1_000` and `1:20` (base 60) are numbers, `1e3` is a
//! float (OmegaConf's own float rule), `0o17` and dates are strings. serde_yaml follows YAML
//! 1.2, so after it has parsed (and checked) a document, the document's events are read again
//! and each plain, untagged scalar in value position gets the value PyYAML would give it.
//! Mapping keys keep serde_yaml's reading.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;
use saphyr_parser::{Event, Parser, ScalarStyle};
use serde_yaml::{Number, Value};

/// The document's shape, with what retyping needs of each scalar.
#[derive(Clone)]
enum Node {
    /// A scalar's text, if it is plain and untagged (else there is nothing to retype).
    Scalar(Option<String>),
    Seq(Vec<Node>),
    Map(Vec<Node>),
}

/// Give every plain, untagged scalar value of `value` (parsed from `text` by serde_yaml) the
/// value PyYAML would read. Leaves `value` as it is where the two parsers disagree on the
/// document's shape.
pub(crate) fn retype(text: &str, value: &mut Value) {
    if let Some(node) = tree(text) {
        walk(&node, value);
    }
}

fn tree(text: &str) -> Option<Node> {
    // Open containers: the node being built and its anchor.
    let mut stack: Vec<(Node, usize)> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    for event in Parser::new_from_str(text) {
        let (event, _) = event.ok()?;
        let done = match event {
            Event::Scalar(v, style, anchor, tag) => {
                let plain = style == ScalarStyle::Plain && tag.is_none();
                Some((Node::Scalar(plain.then(|| v.into_owned())), anchor))
            }
            Event::Alias(id) => Some((anchors.get(&id)?.clone(), 0)),
            Event::SequenceStart(anchor, _) => {
                stack.push((Node::Seq(Vec::new()), anchor));
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push((Node::Map(Vec::new()), anchor));
                None
            }
            Event::SequenceEnd | Event::MappingEnd => stack.pop(),
            Event::DocumentEnd | Event::StreamEnd => return None,
            Event::StreamStart | Event::DocumentStart(_) | Event::Nothing => None,
        };
        if let Some((node, anchor)) = done {
            if anchor != 0 {
                anchors.insert(anchor, node.clone());
            }
            match stack.last_mut() {
                Some((Node::Seq(items) | Node::Map(items), _)) => items.push(node),
                Some((Node::Scalar(_), _)) => return None,
                // The document's root: serde_yaml reads the first document only.
                None => return Some(node),
            }
        }
    }
    None
}

fn walk(node: &Node, value: &mut Value) {
    match (node, value) {
        (Node::Scalar(Some(text)), value) if !matches!(value, Value::Sequence(_) | Value::Mapping(_)) => {
            if let Some(read) = pyyaml_scalar(text)
                && read != *value
            {
                *value = read;
            }
        }
        (Node::Seq(items), Value::Sequence(values)) if items.len() == values.len() => {
            for (n, v) in items.iter().zip(values.iter_mut()) {
                walk(n, v);
            }
        }
        // Keys and values alternate; serde_yaml keeps a mapping's order (and refuses
        // duplicate keys), so the n-th pair is the n-th entry.
        (Node::Map(items), Value::Mapping(map)) if items.len() == 2 * map.len() => {
            for (pair, (_, v)) in items.chunks(2).zip(map.iter_mut()) {
                walk(&pair[1], v);
            }
        }
        _ => {}
    }
}

macro_rules! pattern {
    ($name:ident, $re:expr) => {
        static $name: LazyLock<Regex> = LazyLock::new(|| Regex::new($re).expect("a valid pattern"));
    };
}

// PyYAML's resolver patterns (resolver.py, 6.0.4), and the float rule OmegaConf adds
// (omegaconf/_utils.py, get_yaml_loader, 2.3.1), verbatim but for `re.X` whitespace.
pattern!(BOOL, r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$");
pattern!(
    FLOAT,
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
);
pattern!(
    INT,
    r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$"
);
pattern!(
    OMEGACONF_FLOAT,
    r"^(?:[-+]?[0-9]+(?:_[0-9]+)*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+(?:_[0-9]+)*(?:[eE][-+]?[0-9]+)|\.[0-9]+(?:_[0-9]+)*(?:[eE][-+][0-9]+)?|[-+]?[0-9]+(?:_[0-9]+)*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
);

/// What PyYAML, set up by OmegaConf, reads a plain scalar as; `None` when that does not fit
/// in a config value here (an integer past 64 bits).
pub(crate) fn pyyaml_scalar(s: &str) -> Option<Value> {
    if matches!(s, "" | "~" | "null" | "Null" | "NULL") {
        return Some(Value::Null);
    }
    if let Some(b) = pyyaml_bool(s) {
        return Some(Value::Bool(b));
    }
    let first = s.chars().next()?;
    if "-+0123456789.".contains(first) {
        // The resolvers for a first character are tried in order: PyYAML's float, its int,
        // then OmegaConf's float.
        if FLOAT.is_match(s) {
            return pyyaml_float(s).map(Value::from);
        }
        if INT.is_match(s) {
            return pyyaml_int(s);
        }
        if OMEGACONF_FLOAT.is_match(s) {
            return pyyaml_float(s).map(Value::from);
        }
    }
    Some(Value::String(s.to_string()))
}

/// The boolean PyYAML reads a plain scalar as (`yes`, `Off`, `TRUE`...), if it reads one.
pub fn pyyaml_bool(s: &str) -> Option<bool> {
    let first = s.chars().next()?;
    ("yYnNtTfFoO".contains(first) && BOOL.is_match(s))
        .then(|| matches!(s.as_bytes()[0], b'y' | b'Y' | b't' | b'T') || s.eq_ignore_ascii_case("on"))
}

/// PyYAML's `construct_yaml_int`.
fn pyyaml_int(s: &str) -> Option<Value> {
    let v = s.replace('_', "");
    let (negative, digits) = match v.as_bytes().first() {
        Some(b'-') => (true, &v[1..]),
        Some(b'+') => (false, &v[1..]),
        _ => (false, v.as_str()),
    };
    let magnitude: i128 = if digits == "0" {
        0
    } else if let Some(b) = digits.strip_prefix("0b") {
        i128::from_str_radix(b, 2).ok()?
    } else if let Some(h) = digits.strip_prefix("0x") {
        i128::from_str_radix(h, 16).ok()?
    } else if digits.starts_with('0') {
        i128::from_str_radix(digits, 8).ok()?
    } else if digits.contains(':') {
        let mut total: i128 = 0;
        for part in digits.split(':') {
            total = total.checked_mul(60)?.checked_add(part.parse::<i128>().ok()?)?;
        }
        total
    } else {
        digits.parse().ok()?
    };
    let n = if negative { -magnitude } else { magnitude };
    if let Ok(i) = i64::try_from(n) {
        Some(Value::Number(Number::from(i)))
    } else {
        u64::try_from(n).ok().map(|u| Value::Number(Number::from(u)))
    }
}

/// PyYAML's `construct_yaml_float`.
fn pyyaml_float(s: &str) -> Option<f64> {
    let v = s.replace('_', "").to_ascii_lowercase();
    let (sign, rest) = match v.as_bytes().first() {
        Some(b'-') => (-1.0, &v[1..]),
        Some(b'+') => (1.0, &v[1..]),
        _ => (1.0, v.as_str()),
    };
    let magnitude = match rest {
        ".inf" => f64::INFINITY,
        ".nan" => f64::NAN,
        r if r.contains(':') => {
            let mut total = 0.0;
            for part in r.split(':') {
                total = total * 60.0 + part.parse::<f64>().ok()?;
            }
            total
        }
        r => r.parse::<f64>().ok()?,
    };
    Some(sign * magnitude)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Value {
        let mut v: Value = serde_yaml::from_str(text).unwrap();
        retype(text, &mut v);
        v
    }

    #[test]
    fn plain_scalars_read_as_omegaconf_reads_them() {
        // Each as `OmegaConf.load` gives it (omegaconf 2.3.1, PyYAML 6.0.4).
        let cases: &[(&str, Value)] = &[
            ("yes", Value::Bool(true)),
            ("Off", Value::Bool(false)),
            ("ON", Value::Bool(true)),
            ("no", Value::Bool(false)),
            ("y", Value::from("y")),
            ("yEs", Value::from("yEs")),
            ("0755", Value::from(493)),
            ("00", Value::from(0)),
            ("08", Value::from("08")),
            ("1_000", Value::from(1000)),
            ("-1:20", Value::from(-80)),
            ("0x1F", Value::from(31)),
            ("0b101", Value::from(5)),
            ("0o17", Value::from("0o17")),
            ("1e3", Value::from(1000.0)),
            ("1.5e-3", Value::from(0.0015)),
            ("+.5", Value::from("+.5")),
            (".5", Value::from(0.5)),
            ("1.", Value::from(1.0)),
            ("1:30.5", Value::from(90.5)),
            ("._5", Value::from("._5")),
            ("1e1_0", Value::from("1e1_0")),
            ("2001-12-14", Value::from("2001-12-14")),
            ("inf", Value::from("inf")),
            ("-.inf", Value::from(f64::NEG_INFINITY)),
            ("None", Value::from("None")),
            ("~", Value::Null),
            ("-9223372036854775808", Value::from(i64::MIN)),
            ("18446744073709551615", Value::from(u64::MAX)),
        ];
        for (text, want) in cases {
            let v = read(&format!("k: {text}\nl: [{text}]\n"));
            assert_eq!(&v["k"], want, "{text}");
            assert_eq!(&v["l"][0], want, "{text} in a list");
        }
    }

    #[test]
    fn quoted_tagged_keys_and_aliases() {
        let v = read("a: 'yes'\nb: !!str yes\nyes: 1\nc: &x on\nd: *x\ne: \"0755\"\nf: |\n  yes\n");
        assert_eq!(v["a"], Value::from("yes"));
        assert_eq!(v["b"], Value::from("yes"));
        assert_eq!(v["yes"], Value::from(1), "keys keep their reading");
        assert_eq!(v["c"], Value::Bool(true));
        assert_eq!(v["d"], Value::Bool(true), "an alias reads as its anchor");
        assert_eq!(v["e"], Value::from("0755"));
        assert_eq!(v["f"], Value::from("yes\n"));
        let v = read("base: &b {x: on}\nm:\n  <<: *b\n  y: off\n");
        assert_eq!(v["m"]["<<"]["x"], Value::Bool(true));
        assert_eq!(v["m"]["y"], Value::Bool(false));
    }
}
