//! How elements are typed from text, turned into YAML, and shown back as override text.

use serde_yaml::{Mapping, Value};

use super::Element;

/// Characters that must be escaped with `\` in an unquoted value (Hydra's
/// `escape_special_characters`).
pub(crate) const ESCAPABLE: &[char] = &['\\', '(', ')', '[', ']', '{', '}', ':', '=', ',', ' ', '\t'];

/// Punctuation allowed as-is in an unquoted value (Hydra's `UNQUOTED_CHAR`, plus `:`).
const UNQUOTED_PUNCT: &[char] = &['/', '-', '\\', '+', '.', '$', '%', '*', '@', '?', '|', ':', '_'];

/// Whether `c` may appear in an unquoted value without escaping.
pub(crate) fn is_unquoted_char(c: char) -> bool {
    c.is_alphanumeric() || UNQUOTED_PUNCT.contains(&c)
}

/// What an unquoted run of text (with no escapes or interpolations) denotes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Null,
    Bool(bool),
    Int(i64),
    /// An integer literal that does not fit in 64 bits.
    IntOverflow,
    Float(f64),
    /// `a..b` or `a..b..step`: the bounds as written.
    Range(Vec<Number>),
    /// Anything else: a plain string.
    Plain,
}

/// A range bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Number {
    Int(i64),
    Float(f64),
}

/// Types a whole unquoted value the way Hydra's lexer would (a lone INT, FLOAT, BOOL or
/// NULL token), plus our `a..b[..step]` ranges.
pub(crate) fn classify(text: &str) -> Literal {
    if text.eq_ignore_ascii_case("null") {
        return Literal::Null;
    }
    if text.eq_ignore_ascii_case("true") {
        return Literal::Bool(true);
    }
    if text.eq_ignore_ascii_case("false") {
        return Literal::Bool(false);
    }
    if is_int_literal(text) {
        return match parse_int(text) {
            Some(v) => Literal::Int(v),
            None => Literal::IntOverflow,
        };
    }
    if let Some(v) = parse_float_literal(text) {
        return Literal::Float(v);
    }
    if let Some(bounds) = parse_range_literal(text) {
        return Literal::Range(bounds);
    }
    Literal::Plain
}

fn strip_sign(text: &str) -> &str {
    text.strip_prefix(['+', '-']).unwrap_or(text)
}

/// `DIGIT (_? DIGIT)*`: digits with single underscores between them.
fn is_digits(text: &str) -> bool {
    let mut prev_digit = false;
    for c in text.chars() {
        match c {
            '0'..='9' => prev_digit = true,
            '_' if prev_digit => prev_digit = false,
            _ => return false,
        }
    }
    prev_digit
}

/// Hydra's INT: `[+-]? ('0' | [1-9] (_? DIGIT)*)`.
fn is_int_literal(text: &str) -> bool {
    is_int_unsigned(strip_sign(text))
}

/// Hydra's INT_UNSIGNED: `0`, or digits without a leading zero.
fn is_int_unsigned(s: &str) -> bool {
    s == "0" || (is_digits(s) && !s.starts_with('0'))
}

pub(crate) fn parse_int(text: &str) -> Option<i64> {
    text.replace('_', "").parse().ok()
}

/// Hydra's FLOAT: point floats (`1.`, `.5`, `1.5`), exponent floats, `inf`, `nan`.
pub(crate) fn parse_float_literal(text: &str) -> Option<f64> {
    let negative = text.starts_with('-');
    let body = strip_sign(text);
    if body.eq_ignore_ascii_case("inf") {
        return Some(if negative { f64::NEG_INFINITY } else { f64::INFINITY });
    }
    if body.eq_ignore_ascii_case("nan") {
        return Some(f64::NAN);
    }
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    if exponent.is_some_and(|exp| !is_digits(strip_sign(exp))) {
        return None;
    }
    // The integer part is an INT_UNSIGNED too (`01.10` is two tokens to Hydra, so a string).
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            (int.is_empty() || is_int_unsigned(int))
                && (frac.is_empty() || is_digits(frac))
                && !(int.is_empty() && frac.is_empty())
        }
        // Without a point it is a float only with an exponent (`1e3`).
        None => exponent.is_some() && is_int_unsigned(mantissa),
    };
    if !mantissa_ok {
        return None;
    }
    text.replace('_', "").parse().ok()
}

/// `a..b` or `a..b..step` where each part is a plain decimal number (no leading or
/// trailing point, so `1...5` is not a range).
fn parse_range_literal(text: &str) -> Option<Vec<Number>> {
    let parts: Vec<&str> = text.split("..").collect();
    if !(2..=3).contains(&parts.len()) {
        return None;
    }
    parts.iter().map(|p| range_bound(p)).collect()
}

fn range_bound(text: &str) -> Option<Number> {
    if is_int_literal(text) {
        return parse_int(text).map(Number::Int);
    }
    let body = strip_sign(text);
    if body.starts_with('.') || body.ends_with('.') || !body.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    parse_float_literal(text).filter(|v| v.is_finite()).map(Number::Float)
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for exponents in
/// -4..16 (always with a `.`), otherwise `1e-05` / `1.5e+16`.
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // `{:e}` is the shortest round-trip form, e.g. `-1.25e-5`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if x < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let point = exp as usize + 1;
            let (int_part, frac) = if digits.len() > point {
                (digits[..point].to_string(), digits[point..].to_string())
            } else {
                (format!("{digits:0<point$}"), "0".to_string())
            };
            format!("{sign}{int_part}.{frac}")
        } else {
            let zeros = "0".repeat((-exp - 1) as usize);
            format!("{sign}0.{zeros}{digits}")
        }
    } else {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exp.unsigned_abs())
    }
}

/// Escapes the characters that are special in an unquoted value (`a b` → `a\ b`).
pub(crate) fn escape_unquoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if ESCAPABLE.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Wraps `text` in `quote`, escaping the quote and the backslashes that precede a quote
/// (Hydra's `QuotedString.with_quotes`), so parsing it gives `text` back.
pub(crate) fn with_quotes(text: &str, quote: char) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    let mut backslashes = 0usize;
    for c in text.chars() {
        if c == '\\' {
            backslashes += 1;
            continue;
        }
        if c == quote {
            out.push_str(&"\\".repeat(backslashes * 2 + 1));
        } else {
            out.push_str(&"\\".repeat(backslashes));
        }
        backslashes = 0;
        out.push(c);
    }
    // Backslashes right before the closing quote must be doubled too.
    out.push_str(&"\\".repeat(backslashes * 2));
    out.push(quote);
    out
}

/// Whether an unquoted string can be shown escaped and still parse back as that string.
fn survives_unquoted(text: &str) -> bool {
    !text.is_empty()
        && text.chars().all(|c| is_unquoted_char(c) || ESCAPABLE.contains(&c))
        && classify(text) == Literal::Plain
}

impl Element {
    /// The typed value a job's config receives. Interpolations stay text (`"${lr}"`) to be
    /// resolved later.
    pub fn to_yaml(&self) -> Value {
        match self {
            Element::Null => Value::Null,
            Element::Bool(b) => Value::Bool(*b),
            Element::Int(i) => Value::Number((*i).into()),
            Element::Float(f) => Value::Number((*f).into()),
            Element::Str { value, .. } => Value::String(value.clone()),
            Element::Interpolation(text) => Value::String(text.clone()),
            Element::List(items) => Value::Sequence(items.iter().map(Element::to_yaml).collect()),
            Element::Dict(entries) => {
                let mut map = Mapping::with_capacity(entries.len());
                for (k, v) in entries {
                    map.insert(Value::String(k.clone()), v.to_yaml());
                }
                Value::Mapping(map)
            }
        }
    }

    /// The value as Hydra shows it in `#N : task=1` lines and `overrides.yaml`, written so
    /// that parsing it again gives the same value.
    pub fn to_override_string(&self) -> String {
        self.render(true)
    }

    fn render(&self, top_level: bool) -> String {
        match self {
            Element::Null => "null".into(),
            // Python's str(), as Hydra's sweeper writes every value: `True`, `1e-05`.
            Element::Bool(true) => "True".into(),
            Element::Bool(false) => "False".into(),
            Element::Int(i) => i.to_string(),
            Element::Float(f) => python_float_repr(*f),
            Element::Str { value, quote: Some(q) } => with_quotes(value, *q),
            Element::Str { value, quote: None } => {
                if value.is_empty() && top_level {
                    // `key=` is how Hydra writes the empty string.
                    String::new()
                } else if survives_unquoted(value) {
                    escape_unquoted(value)
                } else {
                    with_quotes(value, '\'')
                }
            }
            // Escaped as Hydra's sweeper writes any string: `$\{x\}`, which a Hydra app
            // reads back as the text `${x}`. Not when it holds a quote: escaped, that no longer
            // parses (Hydra's own sweeper breaks `${oc.env:A,'/tmp'}` so), and as written it does.
            Element::Interpolation(text) if text.contains(['\'', '"']) => text.clone(),
            Element::Interpolation(text) => escape_unquoted(text),
            Element::List(items) => {
                let parts: Vec<String> = items.iter().map(|e| e.render(false)).collect();
                format!("[{}]", parts.join(","))
            }
            Element::Dict(entries) => {
                let parts: Vec<String> =
                    entries.iter().map(|(k, v)| format!("{}:{}", render_key(k), v.render(false))).collect();
                format!("{{{}}}", parts.join(","))
            }
        }
    }
}

fn render_key(key: &str) -> String {
    if !key.is_empty() && key.chars().all(|c| is_unquoted_char(c) || ESCAPABLE.contains(&c)) {
        escape_unquoted(key)
    } else {
        with_quotes(key, '\'')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (0.0, "0.0"),
            (0.25, "0.25"),
            (1e-5, "1e-05"),
            (1e-4, "0.0001"),
            (0.1, "0.1"),
            (3.0, "3.0"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e17, "1.5e+17"),
            (123456.789, "123456.789"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
            (-0.0, "-0.0"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (0.7000000000000001, "0.7000000000000001"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(x), want, "{x:?}");
        }
    }

    #[test]
    fn literals_are_typed_like_hydra() {
        assert_eq!(classify("NULL"), Literal::Null);
        assert_eq!(classify("True"), Literal::Bool(true));
        assert_eq!(classify("1_000"), Literal::Int(1000));
        assert_eq!(classify("-3"), Literal::Int(-3));
        assert_eq!(classify("01"), Literal::Plain);
        assert_eq!(classify("1e-3"), Literal::Float(1e-3));
        assert_eq!(classify(".5"), Literal::Float(0.5));
        assert_eq!(classify("5."), Literal::Float(5.0));
        assert_eq!(classify("-INF"), Literal::Float(f64::NEG_INFINITY));
        assert!(matches!(classify("nan"), Literal::Float(f) if f.is_nan()));
        assert_eq!(classify("1e"), Literal::Plain);
        assert_eq!(classify("."), Literal::Plain);
        assert_eq!(classify("99999999999999999999"), Literal::IntOverflow);
        assert_eq!(classify("1..5"), Literal::Range(vec![Number::Int(1), Number::Int(5)]));
        assert_eq!(classify("1...5"), Literal::Plain);
        assert_eq!(classify("a..b"), Literal::Plain);
        assert_eq!(classify("1..2..3..4"), Literal::Plain);
    }

    #[test]
    fn quoting_round_trips() {
        assert_eq!(with_quotes("a,b", '\''), "'a,b'");
        assert_eq!(with_quotes("it's", '\''), r"'it\'s'");
        assert_eq!(with_quotes(r"a\", '\''), r"'a\\'");
        assert_eq!(with_quotes(r"a\b", '"'), r#""a\b""#);
        assert_eq!(escape_unquoted("a b,c"), r"a\ b\,c");
    }
}
