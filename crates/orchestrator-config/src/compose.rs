//! Applying one job's overrides to the app's config.
//!
//! Keys are dot paths into nested mappings (`/` is read as `.`, so a group path `db/x`
//! addresses `db.x`); a segment that is a number indexes an existing list. Semantics follow
//! Hydra's `OmegaConf.update(..., merge=True)`: a mapping value is merged into an existing
//! mapping, anything else replaces. One deliberate divergence: `key=value` on a missing key
//! adds it instead of failing, because the app config is often empty and `task=1..5` must
//! just work.

use serde_yaml::{Mapping, Value};

use crate::grammar::OverrideKind;
use crate::sweep::ResolvedOverride;

/// Why an override cannot be applied; each names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ComposeError {
    /// `+key=v` on a key that exists.
    #[error("could not append to config: an item is already at `{key}`; drop the `+` to override it")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// `~key` on a key that does not exist.
    #[error("could not delete `{key}`: it is not in the config")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// `~key=v` where the key holds another value.
    #[error("could not delete from config: the value of `{key}` is {actual} and not {expected}")]
    ValueMismatch {
        /// The key.
        key: String,
        /// The value in the config.
        actual: String,
        /// The value the override asked for.
        expected: String,
    },
    /// A path goes through something that is neither a mapping nor a list.
    #[error("cannot apply `{key}`: `{parent}` is {found}, not a mapping")]
    NotAMapping {
        /// The full key.
        key: String,
        /// The part of the key that holds the scalar.
        parent: String,
        /// What it holds (`an integer`, `a string`, ...).
        found: &'static str,
    },
    /// A numeric segment past the end of a list.
    #[error("cannot apply `{key}`: index {index} is out of range for the list at `{parent}` (length {len})")]
    IndexOutOfRange {
        /// The full key.
        key: String,
        /// The part of the key that holds the list.
        parent: String,
        /// The index asked for.
        index: String,
        /// The list's length.
        len: usize,
    },
    /// A key that cannot address the app config.
    #[error("cannot apply `{key}`: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// Applies `items` in order to `config` (a null config becomes an empty mapping).
///
/// # Errors
/// The first override that cannot be applied; earlier ones stay applied.
pub fn apply_overrides(config: &mut Value, items: &[ResolvedOverride]) -> Result<(), ComposeError> {
    for item in items {
        apply_one(config, item)?;
    }
    Ok(())
}

/// Whether float `f` is exactly the integer `i`.
fn float_is_int(f: f64, i: i128) -> bool {
    f.fract() == 0.0 && f.abs() < 1.7e38 && f as i128 == i && (i as f64) == f
}

/// Python's `==` for config values: numbers compare by value across int and float.
fn python_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            // Integers exactly (u64 too), an integer and a float only when the float is that
            // very integer: 9007199254740993 != 9007199254740992.0, as in Python.
            let int = |n: &serde_yaml::Number| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
            match (int(x), int(y)) {
                (Some(a), Some(b)) => a == b,
                (Some(i), None) => y.as_f64().is_some_and(|f| float_is_int(f, i)),
                (None, Some(i)) => x.as_f64().is_some_and(|f| float_is_int(f, i)),
                (None, None) => x.as_f64() == y.as_f64(),
            }
        }
        // True == 1 in Python, as well.
        (Value::Bool(x), Value::Number(n)) | (Value::Number(n), Value::Bool(x)) => {
            n.as_f64() == Some(f64::from(u8::from(*x)))
        }
        (Value::Sequence(x), Value::Sequence(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| python_eq(a, b)),
        _ => a == b,
    }
}

fn split_key(key: &str) -> Result<Vec<&str>, ComposeError> {
    if key.contains('@') {
        return Err(ComposeError::InvalidKey {
            key: key.to_string(),
            reason: "`@package` only applies to config groups, not to the app config".into(),
        });
    }
    let segments: Vec<&str> = key.split(['.', '/']).collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(ComposeError::InvalidKey { key: key.to_string(), reason: "a key segment is empty".into() });
    }
    Ok(segments)
}

/// "a list", "an integer"…: what a value is, for error messages.
pub(crate) fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn show(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| {
        serde_yaml::to_string(v).map(|s| s.trim_end().to_string()).unwrap_or_else(|_| "<unprintable>".to_string())
    })
}

/// Walks to the node holding the last segment. With `create`, missing (or null) nodes on
/// the way become empty mappings; without, a missing node gives `Ok(None)`.
fn parent_node<'a>(
    root: &'a mut Value,
    segments: &[&str],
    key: &str,
    create: bool,
) -> Result<Option<&'a mut Value>, ComposeError> {
    let mut node = root;
    for (depth, segment) in segments.iter().enumerate() {
        let here = || segments.get(..depth).unwrap_or_default().join(".");
        if create && node.is_null() {
            *node = Value::Mapping(Mapping::new());
        }
        node = match node {
            Value::Mapping(map) => {
                let k = Value::String((*segment).to_string());
                if create {
                    let child = map.entry(k).or_insert(Value::Null);
                    if child.is_null() {
                        *child = Value::Mapping(Mapping::new());
                    }
                    child
                } else {
                    match map.get_mut(&k) {
                        Some(child) => child,
                        None => return Ok(None),
                    }
                }
            }
            Value::Sequence(seq) => {
                let len = seq.len();
                match segment.parse::<usize>().ok().and_then(|i| seq.get_mut(i)) {
                    Some(child) => child,
                    None if !create => return Ok(None),
                    None => {
                        return Err(ComposeError::IndexOutOfRange {
                            key: key.to_string(),
                            parent: here(),
                            index: (*segment).to_string(),
                            len,
                        });
                    }
                }
            }
            other => {
                return Err(ComposeError::NotAMapping {
                    key: key.to_string(),
                    parent: here(),
                    found: kind_name(other),
                });
            }
        };
    }
    Ok(Some(node))
}

/// Hydra's merge: mappings merge key by key, anything else replaces.
fn merge_into(target: &mut Value, new: Value) {
    match (target, new) {
        (Value::Mapping(old), Value::Mapping(new)) => {
            for (k, v) in new {
                match old.get_mut(&k) {
                    Some(existing) if existing.is_mapping() && v.is_mapping() => {
                        merge_into(existing, v);
                    }
                    _ => {
                        old.insert(k, v);
                    }
                }
            }
        }
        (target, new) => *target = new,
    }
}

fn apply_one(config: &mut Value, item: &ResolvedOverride) -> Result<(), ComposeError> {
    let key = item.key.as_str();
    let segments = split_key(key)?;
    let Some((last, parents)) = segments.split_last() else {
        return Err(ComposeError::InvalidKey { key: key.to_string(), reason: "the key is empty".into() });
    };
    if config.is_null() {
        *config = Value::Mapping(Mapping::new());
    }
    let parent_path = parents.join(".");
    let not_container = |found: &Value| ComposeError::NotAMapping {
        key: key.to_string(),
        parent: parent_path.clone(),
        found: kind_name(found),
    };
    let new_value = item.value.as_ref().map(crate::grammar::Element::to_yaml).unwrap_or(Value::Null);

    if item.kind == OverrideKind::Delete {
        let missing = || ComposeError::MissingKey { key: key.to_string() };
        let parent = parent_node(config, parents, key, false)?.ok_or_else(missing)?;
        let current = match &*parent {
            Value::Mapping(map) => map.get(*last),
            Value::Sequence(seq) => last.parse::<usize>().ok().and_then(|i| seq.get(i)),
            other => return Err(not_container(other)),
        }
        .ok_or_else(missing)?;
        // Hydra: `value is not None and value != config_value`, in Python: `~key=null` deletes
        // whatever is there, and 1 == 1.0.
        if item.value.is_some() && !new_value.is_null() && !python_eq(current, &new_value) {
            return Err(ComposeError::ValueMismatch {
                key: key.to_string(),
                actual: show(current),
                expected: show(&new_value),
            });
        }
        match parent {
            Value::Mapping(map) => {
                map.shift_remove(*last);
            }
            Value::Sequence(seq) => {
                if let Some(i) = last.parse::<usize>().ok().filter(|i| *i < seq.len()) {
                    seq.remove(i);
                }
            }
            _ => {}
        }
        return Ok(());
    }

    let parent =
        parent_node(config, parents, key, true)?.ok_or_else(|| ComposeError::MissingKey { key: key.to_string() })?;
    if parent.is_null() {
        *parent = Value::Mapping(Mapping::new());
    }
    let slot: Option<&mut Value> = match parent {
        Value::Mapping(map) => map.get_mut(*last),
        Value::Sequence(seq) => {
            let len = seq.len();
            match last.parse::<usize>().ok().and_then(|i| seq.get_mut(i)) {
                Some(v) => Some(v),
                None => {
                    return Err(ComposeError::IndexOutOfRange {
                        key: key.to_string(),
                        parent: parent_path,
                        index: (*last).to_string(),
                        len,
                    });
                }
            }
        }
        other => return Err(not_container(other)),
    };
    match (item.kind, slot) {
        // Hydra's rule: `+` may also set a key whose value is null, and merge a dict or list
        // into what is there.
        // (`???`, OmegaConf's missing value, counts as null there too.)
        (OverrideKind::Add, Some(existing))
            if !existing.is_null()
                && existing.as_str() != Some("???")
                && !matches!(new_value, Value::Mapping(_) | Value::Sequence(_)) =>
        {
            Err(ComposeError::AlreadyExists { key: key.to_string() })
        }
        (_, Some(existing)) => {
            merge_into(existing, new_value);
            Ok(())
        }
        (_, None) => {
            // Only a mapping parent can lack the key (list slots were checked above).
            if let Value::Mapping(map) = parent {
                map.insert(Value::String((*last).to_string()), new_value);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grammar::parse_override;
    use crate::sweep::{SweepContext, SweepPlan};

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    fn apply(config: &str, args: &[&str]) -> Result<Value, ComposeError> {
        let overrides = args.iter().map(|a| parse_override(a).unwrap()).collect();
        let plan = SweepPlan::new(overrides, &SweepContext::default()).unwrap();
        let job = plan.job(0).unwrap();
        let mut value = yaml(config);
        apply_overrides(&mut value, &job.items).map(|()| value)
    }

    #[test]
    fn change_sets_and_adds() {
        assert_eq!(apply("{}", &["task=1..5"]).unwrap(), yaml("task: 1"));
        assert_eq!(apply("", &["a.b.c=x"]).unwrap(), yaml("a: {b: {c: x}}"));
        assert_eq!(apply("lr: 0.1\nname: x", &["lr=0.5", "name='a,b'"]).unwrap(), yaml("lr: 0.5\nname: 'a,b'"));
        assert_eq!(apply("a: null", &["a.b=1"]).unwrap(), yaml("a: {b: 1}"));
        assert_eq!(apply("x: 1", &["x=${lr}"]).unwrap(), yaml("x: '${lr}'"));
        assert_eq!(apply("x: 1", &["x="]).unwrap(), yaml("x: ''"));
    }

    #[test]
    fn mappings_merge_like_hydra() {
        assert_eq!(
            apply("db: {driver: mysql, port: 1}", &["db={port:2,user:u}"]).unwrap(),
            yaml("db: {driver: mysql, port: 2, user: u}")
        );
        assert_eq!(apply("l: [1, 2]", &["l=[3]"]).unwrap(), yaml("l: [3]"));
        assert_eq!(apply("l: [1, 2]", &["l.1=9"]).unwrap(), yaml("l: [1, 9]"));
    }

    #[test]
    fn add_refuses_existing_keys() {
        assert_eq!(apply("{}", &["+extra=1"]).unwrap(), yaml("extra: 1"));
        let e = apply("task: 1", &["+task=2"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "could not append to config: an item is already at `task`; drop the `+` to override it"
        );
        assert_eq!(apply("task: 1", &["++task=2"]).unwrap(), yaml("task: 2"));
        assert_eq!(apply("{}", &["++a.b=2"]).unwrap(), yaml("a: {b: 2}"));
        // As hydra-core 1.3's `+`: a null may be set, a dict is merged, a list replaces.
        assert_eq!(apply("nul: null", &["+nul=5"]).unwrap(), yaml("nul: 5"));
        assert_eq!(apply("k: ???", &["+k=5"]).unwrap(), yaml("k: 5"));
        assert_eq!(apply("d: {j: two}", &["+d={k:9}"]).unwrap(), yaml("d: {j: two, k: 9}"));
        assert_eq!(apply("a: {b: {c: 0}}", &["+a.b={q:1}"]).unwrap(), yaml("a: {b: {c: 0, q: 1}}"));
        assert_eq!(apply("task: 1", &["+task=[1]"]).unwrap(), yaml("task: [1]"));
        assert!(apply("d: {k: 1}", &["+d=2"]).is_err());
    }

    #[test]
    fn delete() {
        assert_eq!(apply("a: 1\nb: 2", &["~a"]).unwrap(), yaml("b: 2"));
        assert_eq!(apply("a: {b: 1, c: 2}", &["~a.b"]).unwrap(), yaml("a: {c: 2}"));
        assert_eq!(apply("a: 1", &["~a=1"]).unwrap(), yaml("{}"));
        // As Hydra compares, in Python: null deletes whatever is there, and 1 == 1.0.
        assert_eq!(apply("a: 1", &["~a=null"]).unwrap(), yaml("{}"));
        assert_eq!(apply("a: 1", &["~a=1.0"]).unwrap(), yaml("{}"));
        assert_eq!(apply("a: 1.0", &["~a=1"]).unwrap(), yaml("{}"));
        assert_eq!(apply("a: [1, 2.0]", &["~a=[1.0,2]"]).unwrap(), yaml("{}"));
        assert!(apply("a: '1'", &["~a=1"]).is_err(), "a string is not a number");
        assert!(apply("a: 9007199254740993", &["~a=9007199254740992.0"]).is_err(), "no rounding through f64");
        assert_eq!(apply("l: [1, 2, 3]", &["~l.0"]).unwrap(), yaml("l: [2, 3]"));
        let e = apply("a: 1", &["~b"]).unwrap_err();
        assert_eq!(e, ComposeError::MissingKey { key: "b".into() });
        assert!(e.to_string().contains("`b`"));
        assert!(matches!(apply("a: 1", &["~a.b.c"]), Err(ComposeError::NotAMapping { .. })));
        let e = apply("task: 1", &["~task=2"]).unwrap_err();
        assert_eq!(e.to_string(), "could not delete from config: the value of `task` is 1 and not 2");
    }

    #[test]
    fn errors_name_the_path() {
        let e = apply("task: 1", &["task.x=1"]).unwrap_err();
        assert_eq!(e, ComposeError::NotAMapping { key: "task.x".into(), parent: "task".into(), found: "an integer" });
        assert_eq!(e.to_string(), "cannot apply `task.x`: `task` is an integer, not a mapping");
        let e = apply("a: {b: text}", &["a.b.c.d=1"]).unwrap_err();
        assert!(e.to_string().contains("`a.b` is a string"), "{e}");
        let e = apply("l: [1]", &["l.5=1"]).unwrap_err();
        assert!(matches!(e, ComposeError::IndexOutOfRange { len: 1, .. }), "{e}");
        let e = apply("{}", &["db@pkg=1"]).unwrap_err();
        assert!(matches!(e, ComposeError::InvalidKey { .. }), "{e}");
        let e = apply("7", &["a=1"]).unwrap_err();
        assert!(matches!(e, ComposeError::NotAMapping { ref parent, .. } if parent.is_empty()), "{e}");
    }

    #[test]
    fn group_paths_address_nested_keys() {
        assert_eq!(apply("{}", &["hydra/launcher=joblib"]).unwrap(), yaml("hydra: {launcher: joblib}"));
    }
}
