//! YAML written as Hydra (PyYAML, OmegaConf) writes it: what a YAML 1.1 reader would misread
//! is quoted, floats are Python's `repr`, empty collections are in flow style. Pure text logic;
//! the Hydra layer writes `multirun.yaml` and each job's `.hydra/*.yaml` with it.

use serde_yaml::Value;

/// `overrides.yaml`: the list of strings as `serde_yaml` writes it (a test checks).
pub fn overrides_yaml(items: &[String]) -> Result<String, serde_yaml::Error> {
    let mut out = String::with_capacity(items.iter().map(|s| s.len() + 3).sum());
    for item in items {
        match yaml_scalar(item) {
            Some(s) => {
                out.push_str("- ");
                out.push_str(&s);
                out.push('\n');
            }
            None => {
                let list = Value::Sequence(items.iter().map(|s| Value::String(s.clone())).collect());
                return yaml_general(&list);
            }
        }
    }
    Ok(if out.is_empty() { "[]\n".into() } else { out })
}

/// `s` as `serde_yaml` writes a string in block context, when that fits on one line: as is
/// for the usual `key=value` and path-like strings, else as `serde_yaml` renders it alone
/// (the style it picks for a string does not depend on where the string stands).
pub fn yaml_scalar(s: &str) -> Option<std::borrow::Cow<'_, str>> {
    if yaml11_misreads(s) {
        return Some(single_quoted(s).into());
    }
    // Safe as plain: starts with no indicator, has no space, quote, `:` or `#`, and holds
    // `=` or `/`, so it cannot read as a number, bool or null.
    let first_ok = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'/');
    let chars_ok = s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_./=,+-".contains(&b));
    if first_ok && chars_ok && s.bytes().any(|b| b == b'=' || b == b'/') {
        return Some(s.into());
    }
    // A word (`task`, a job id `my_app_3`) that does not start with a digit reads as a string
    // too, unless it is one of the words a YAML reader or Rust's float parser takes for
    // something else (serde_yaml quotes those).
    let word = s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if word && s.bytes().next().is_some_and(|b| !b.is_ascii_digit()) {
        const SPECIAL: [&str; 13] =
            ["null", "true", "false", "inf", "infinity", "nan", "y", "yes", "n", "no", "on", "off", "none"];
        if s.contains('_') || !SPECIAL.iter().any(|w| s.eq_ignore_ascii_case(w)) {
            return Some(s.into());
        }
    }
    let rendered = serde_yaml::to_string(&Value::String(s.to_string())).ok()?;
    let line = rendered.strip_suffix('\n')?;
    (!line.contains('\n')).then(|| line.to_string().into())
}

/// Whether a YAML 1.1 reader (PyYAML, so OmegaConf and every Hydra app) would read `s`,
/// written plain, as something other than this string: `yes`/`no`/`on`/`off`, `1_000`,
/// `12:30` (sexagesimal), dates; or whether OmegaConf's writer quotes it anyway (`y`/`n`, and
/// the words Python's `float()` takes: `inf`, `nan`). serde_yaml follows YAML 1.2 and writes
/// those plain; Hydra's own files quote them. (What YAML 1.2 misreads too, serde_yaml quotes
/// already.)
pub fn yaml11_misreads(s: &str) -> bool {
    // Single quotes cannot hold line breaks or control characters: serde_yaml's escapes do,
    // and a quoted or block string reads as a string in YAML 1.1 as well.
    if s.chars().any(char::is_control) {
        return false;
    }
    // PyYAML's `value` and `merge` tags.
    if s == "=" || s == "<<" {
        return true;
    }
    // OmegaConf's YAML_BOOL_TYPES holds these four besides PyYAML's booleans.
    if matches!(s, "y" | "Y" | "n" | "N") {
        return true;
    }
    if crate::yaml11::pyyaml_bool(s).is_some() {
        return true;
    }
    let t = s.strip_prefix(['+', '-']).unwrap_or(s);
    let b = t.as_bytes();
    // OmegaConf quotes what `float()` reads: `inf`, `-Infinity`, `NaN` in any case.
    if ["inf", "infinity", "nan"].iter().any(|w| t.eq_ignore_ascii_case(w)) {
        return true;
    }
    let number_like = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_alphanumeric() || b"_.:+-".contains(&c));
    // Numbers with `_` or `:` (1_000, 0x_1F, 1:20, 1_0.5, .5_0): only YAML 1.1 reads them as
    // numbers.
    let digit_first = match b {
        [b'.', d, ..] | [d, ..] => d.is_ascii_digit(),
        [] => false,
    };
    if digit_first && (t.contains('_') || t.contains(':')) && number_like(t) {
        return true;
    }
    // Timestamps: 2001-12-14, and anything longer that starts like one.
    b.len() >= 8
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5].is_ascii_digit()
        && (b[6] == b'-' || (b[6].is_ascii_digit() && b[7] == b'-'))
}

/// A float as PyYAML (so Hydra) writes it: Python's `repr`, with `.0` put before an exponent
/// that has no `.` (`1.0e-06`, not `1e-06`, which a YAML 1.1 reader takes for a string), and
/// `.inf`/`.nan`.
pub fn pyyaml_float(f: f64) -> String {
    if f.is_nan() {
        return ".nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { ".inf" } else { "-.inf" }.into();
    }
    let repr = crate::grammar::python_float_repr(f);
    if !repr.contains('.') && repr.contains('e') { repr.replacen('e', ".0e", 1) } else { repr }
}

/// `s` in YAML single quotes (a `'` doubled).
pub fn single_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// serde_yaml's rendering, with the strings a YAML 1.1 reader would misread quoted: each is
/// swapped for a unique plain word, rendered, and swapped back quoted.
pub fn yaml_general(value: &Value) -> Result<String, serde_yaml::Error> {
    fn mark(s: &str, marks: &mut Vec<String>, stem: &str) -> Value {
        if yaml11_misreads(s) {
            marks.push(single_quoted(s));
            Value::String(format!("{stem}{}x", marks.len() - 1))
        } else {
            Value::String(s.to_string())
        }
    }
    fn swap(v: &Value, marks: &mut Vec<String>, stem: &str) -> Value {
        match v {
            Value::String(s) => mark(s, marks, stem),
            Value::Number(n) if n.is_f64() => match n.as_f64() {
                Some(f) => {
                    marks.push(pyyaml_float(f));
                    Value::String(format!("{stem}{}x", marks.len() - 1))
                }
                None => v.clone(),
            },
            Value::Sequence(items) => Value::Sequence(items.iter().map(|i| swap(i, marks, stem)).collect()),
            Value::Mapping(m) => Value::Mapping(
                m.iter()
                    .map(|(k, v)| {
                        let k = match k {
                            Value::String(s) => mark(s, marks, stem),
                            other => other.clone(),
                        };
                        (k, swap(v, marks, stem))
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    fn any_misread(v: &Value) -> bool {
        match v {
            Value::String(s) => yaml11_misreads(s),
            Value::Number(n) => n.as_f64().is_some_and(|f| n.is_f64() && pyyaml_float(f) != n.to_string()),
            Value::Sequence(items) => items.iter().any(any_misread),
            Value::Mapping(m) => m.iter().any(|(k, v)| any_misread(k) || any_misread(v)),
            _ => false,
        }
    }
    let plain = serde_yaml::to_string(value)?;
    // The usual case: nothing to quote, one rendering and no copy of the document.
    if !any_misread(value) {
        return Ok(plain);
    }
    let mut stem = String::from("orchq");
    while plain.contains(&stem) {
        stem.push('q');
    }
    let mut marks = Vec::new();
    let swapped = swap(value, &mut marks, &stem);
    let text = serde_yaml::to_string(&swapped)?;
    Ok(unswap(&text, &stem, &marks))
}

/// `text` with each mark `<stem><i>x` replaced by `marks[i]`, in one pass (a `replacen` per
/// mark was quadratic: 40,000 marks took 5.7 s). The stem occurs nowhere else in `text`.
fn unswap(text: &str, stem: &str, marks: &[String]) -> String {
    let mut out = String::with_capacity(text.len() + marks.iter().map(|m| m.len()).sum::<usize>());
    let mut rest = text;
    while let Some(at) = rest.find(stem) {
        out.push_str(&rest[..at]);
        let after = &rest[at + stem.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let mark = after[..digits].parse::<usize>().ok().filter(|_| after[digits..].starts_with('x'));
        match mark.and_then(|i| marks.get(i)) {
            Some(quoted) => {
                out.push_str(quoted);
                rest = &after[digits + 1..];
            }
            // Not a mark after all: kept as it is.
            None => {
                out.push_str(stem);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `value` as Hydra writes a YAML file (empty collections in flow style).
pub fn yaml_text(value: &Value) -> Result<String, serde_yaml::Error> {
    match value {
        Value::Mapping(m) if m.is_empty() => Ok("{}\n".to_string()),
        Value::Sequence(s) if s.is_empty() => Ok("[]\n".to_string()),
        _ => match flat_yaml(value) {
            Some(text) => Ok(text),
            None => yaml_general(value),
        },
    }
}

/// A flat mapping of strings, integers, booleans and nulls (the usual app config: `task: 1`)
/// as `yaml_general` writes it (a test checks), without starting serde_yaml's emitter for
/// every job; `None` for anything else.
pub fn flat_yaml(value: &Value) -> Option<String> {
    let Value::Mapping(m) = value else { return None };
    let mut out = String::with_capacity(m.len() * 16);
    for (k, v) in m {
        // Keys of the usual kind only: a long key, or one with a line break, is written in
        // the `? key` form.
        let Value::String(k) = k else { return None };
        if k.len() > 64 || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b"_./=,+-".contains(&b)) {
            return None;
        }
        out.push_str(&yaml_scalar(k)?);
        out.push_str(": ");
        match v {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) if n.is_i64() || n.is_u64() => out.push_str(&n.to_string()),
            Value::String(s) => out.push_str(&yaml_scalar(s)?),
            _ => return None,
        }
        out.push('\n');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;
    use serde_yaml::Mapping;

    #[test]
    fn overrides_yaml_handles_empty_and_multiline_lists() {
        assert_eq!(overrides_yaml(&[]).unwrap(), "[]\n");
        let odd = vec!["a=1".to_string(), "b=x\ny".to_string()];
        let list = Value::Sequence(odd.iter().map(|s| Value::String(s.clone())).collect());
        assert_eq!(overrides_yaml(&odd).unwrap(), serde_yaml::to_string(&list).unwrap());
    }

    #[test]
    fn marks_are_put_back_in_one_pass_each_in_its_place() {
        let marks = ["'yes'".to_string(), "'on'".to_string(), "'1:20'".to_string()];
        let text = "a: q0x\nq12: q2x\nb: [q1x, q1]\nq";
        assert_eq!(unswap(text, "q", &marks), "a: 'yes'\nq12: '1:20'\nb: ['on', q1]\nq");
        // Many: linear (a replacen per mark took minutes at 400,000).
        let many: Vec<String> = (0..200_000).map(|i| format!("'{i}'")).collect();
        let text: String = (0..200_000).map(|i| format!("k: orchq{i}x\n")).collect();
        let out = unswap(&text, "orchq", &many);
        assert!(out.starts_with("k: '0'\nk: '1'\n") && out.ends_with("k: '199999'\n"));
        // A config of 40,000 strings a YAML 1.1 reader would misread, rendered quoted.
        let doc = Value::Mapping((0..40_000).map(|i| (format!("k{i}").into(), "yes".into())).collect::<Mapping>());
        let text = yaml_general(&doc).unwrap();
        assert_eq!(text.lines().count(), 40_000);
        assert!(text.lines().all(|l| l.ends_with(": 'yes'")), "{}", &text[..100]);
    }

    #[test]
    fn yaml_scalar_quotes_the_words_serde_yaml_quotes() {
        let words = [
            "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "inf", "Inf", "infinity", "NaN", "nan",
            "y", "Y", "yes", "Yes", "n", "no", "NO", "on", "On", "off", "OFF", "none", "None", "task", "x", "e", "E",
            "e5", "_1", "i", "infinit", "nana",
        ];
        for w in words {
            let expected = yaml_general(&Value::String(w.to_string())).unwrap();
            assert_eq!(yaml_scalar(w).map(|s| format!("{s}\n")), Some(expected), "{w}");
        }
    }

    #[test]
    fn floats_are_written_as_pyyaml_writes_them() {
        // What `yaml.safe_dump` writes for each (PyYAML 6.0.4): `1e-06` would read back as a
        // string there.
        let cases = [
            (1e-6, "1.0e-06"),
            (1e16, "1.0e+16"),
            (1.5e300, "1.5e+300"),
            (1e15, "1000000000000000.0"),
            (0.1, "0.1"),
            (100.0, "100.0"),
            (-0.0, "-0.0"),
            (f64::INFINITY, ".inf"),
            (f64::NEG_INFINITY, "-.inf"),
            (f64::NAN, ".nan"),
        ];
        for (f, text) in cases {
            assert_eq!(pyyaml_float(f), text, "{f}");
            let v: Value =
                serde_yaml::from_str(&format!("lr: {f:e}\nl: [{f:e}]\n").replace("NaN", ".nan").replace("inf", ".inf"))
                    .unwrap();
            assert_eq!(yaml_text(&v).unwrap(), format!("lr: {text}\nl:\n- {text}\n"), "{f}");
        }
        for s in ["685.230_15e+03", "1_0.5e-3"] {
            assert!(yaml11_misreads(s), "{s}");
        }
    }

    #[test]
    fn strings_a_yaml_1_1_reader_would_misread_are_quoted() {
        // As `OmegaConf.to_yaml` writes them (hydra-core 1.3, omegaconf 2.3.1).
        for s in [
            "yes",
            "No",
            "ON",
            "off",
            "1_000",
            "12:30",
            "-1:20",
            "0x_1F",
            "2001-12-14",
            "2001-1-2 10:00",
            "y",
            "N",
            "inf",
            "-Infinity",
            "+nan",
            "NaN",
            "iNf",
            ".5_0",
        ] {
            assert!(yaml11_misreads(s), "{s}");
            assert_eq!(yaml_scalar(s).as_deref(), Some(single_quoted(s).as_str()), "{s}");
        }
        for s in ["yEs", "task", "a=1", "12-30", "1.5", "2001-12", "v1_000", "x:1", "", "_1", "nana", "infinit", "yy"] {
            assert!(!yaml11_misreads(s), "{s}");
        }
        assert_eq!(yaml_scalar("=").as_deref(), Some("'='"), "PyYAML's value tag");
        // Line breaks and control characters cannot be single-quoted: serde_yaml escapes them.
        for s in ["2001-12-14\nfoo", "2001-12-14\u{7}"] {
            assert!(!yaml11_misreads(s), "{s:?}");
            let v: Value = serde_yaml::from_str(
                &yaml_text(&Value::Mapping([("x".into(), s.into())].into_iter().collect())).unwrap(),
            )
            .unwrap();
            assert_eq!(v["x"], Value::from(s));
        }
        // Nested, keys too: each misread string is quoted, nothing else changes.
        let v: Value = serde_yaml::from_str(
            "a: {yes: [on, 1_0, plain]}
b: '12:30'
",
        )
        .unwrap();
        assert_eq!(yaml_text(&v).unwrap(), "a:\n  'yes':\n  - 'on'\n  - '1_0'\n  - plain\nb: '12:30'\n");
    }

    #[test]
    fn flat_yaml_takes_the_usual_app_config_and_leaves_the_rest() {
        let v: Value =
            serde_yaml::from_str("task: 1\nname: foo\nflag: true\npath: /a/b\nx: null\n'true': yes\n").unwrap();
        assert_eq!(
            flat_yaml(&v).as_deref(),
            Some("task: 1\nname: foo\nflag: true\npath: /a/b\nx: null\n'true': 'yes'\n")
        );
        for other in ["lr: 0.1\n", "a:\n  b: 1\n", "l: [1, 2]\n", "? [a]\n: 1\n"] {
            let v: Value = serde_yaml::from_str(other).unwrap();
            assert_eq!(flat_yaml(&v), None, "{other}");
            assert_eq!(yaml_text(&v).unwrap(), serde_yaml::to_string(&v).unwrap(), "{other}");
        }
    }

    proptest::proptest! {
        /// A flat mapping rendered by hand is byte for byte what `serde_yaml` writes.
        #[test]
        fn flat_yaml_is_what_serde_yaml_writes(
            entries in proptest::collection::vec(
                (
                    "[a-z_][a-z0-9_]{0,6}|[a-zA-Z0-9_./=,+ :#'\"!&*|>%@`~?{}\\[\\]\\-\t\né]{0,8}",
                    proptest::prop_oneof![
                        proptest::strategy::Just(Value::Null),
                        proptest::bool::ANY.prop_map(Value::from),
                        proptest::num::i64::ANY.prop_map(Value::from),
                        proptest::num::u64::ANY.prop_map(Value::from),
                        "[a-zA-Z0-9_./=,+ :#'\"!&*|>%@`~?{}\\[\\]\\-\t\né]{0,10}".prop_map(Value::from),
                    ],
                ),
                1..6,
            )
        ) {
            let mut m = Mapping::new();
            for (k, v) in entries {
                m.insert(Value::String(k), v);
            }
            let v = Value::Mapping(m);
            if let Some(text) = flat_yaml(&v) {
                proptest::prop_assert_eq!(text, yaml_general(&v).unwrap());
            }
        }

        /// The one-line rendering stands for the string wherever `serde_yaml` would put it
        /// in block context (a mapping value, a sequence item), byte for byte.
        #[test]
        fn yaml_scalar_is_what_serde_yaml_writes(s in "[a-zA-Z0-9_./=,+ :#'\"!&*|>%@`~?{}\\[\\]\\-\t\né]{0,12}|[a-zA-Z0-9_]{0,8}") {
            let v = Value::String(s.clone());
            let mut m = Mapping::new();
            m.insert("k".into(), v.clone());
            m.insert("l".into(), Value::Sequence(vec![v]));
            let expected = yaml_general(&Value::Mapping(m)).unwrap();
            if let Some(sc) = yaml_scalar(&s) {
                proptest::prop_assert_eq!(format!("k: {sc}\nl:\n- {sc}\n"), expected);
            } else {
                proptest::prop_assert!(s.contains('\n') || expected.matches('\n').count() > 3, "{expected:?}");
            }
        }
    }
}
