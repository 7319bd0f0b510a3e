//! Text that Hydra derives from a config: `${key}` interpolation as OmegaConf resolves config
//! references, `{name}` placeholders, scalars as text, and `override_dirname`. Pure logic.

use serde_yaml::Value;

use crate::sweep::ResolvedOverride;

/// Hydra's `override_dirname`: the job's override lines but the excluded keys', sorted,
/// joined by `item_sep`, and every `=` in the result made `kv_sep`.
pub fn override_dirname(items: &[ResolvedOverride], how: &crate::OverrideDirname) -> String {
    dirname_of(items.iter().map(|o| (o.key.as_str(), o.display())), how)
}

/// `override_dirname` of the overrides as typed (the sweep's, for `multirun.yaml`): the
/// same rules as for a job's, on the typed text (`a=1,2`).
pub fn typed_override_dirname(typed: &[String], how: &crate::OverrideDirname) -> String {
    fn key_of(line: &str) -> &str {
        line.trim_start_matches(['+', '~']).split('=').next().unwrap_or_default()
    }
    dirname_of(typed.iter().map(|l| (key_of(l), l.clone())), how)
}

/// Hydra's get_overrides_dirname over `(key, line)` pairs: it leaves out the lines whose key,
/// without its `+`/`~` prefix (`override.key_or_group`), is in `exclude_keys` (`seed` leaves
/// out `+seed=1`), sorts the whole lines, prefixes included (`+zz=1` before `task=2`, `lr2=1`
/// before `lr=1`), and replaces `=` everywhere, in values too.
pub fn dirname_of<'a>(lines: impl Iterator<Item = (&'a str, String)>, how: &crate::OverrideDirname) -> String {
    let mut lines: Vec<String> = lines
        .filter(|(key, _)| !key.starts_with("hydra.") && !how.exclude_keys.iter().any(|k| k == key))
        .map(|(_, line)| line)
        .collect();
    lines.sort_unstable();
    let joined = lines.join(&how.item_sep);
    if how.kv_sep == "=" { joined } else { joined.replace('=', &how.kv_sep) }
}

/// The value at a dotted key (`a.b.0`: list items by index), if there is one.
pub fn lookup(config: &Value, dotted: &str) -> Option<Value> {
    let mut cur = config;
    for part in dotted.split('.') {
        cur = match cur {
            Value::Mapping(m) => m.get(part)?,
            Value::Sequence(s) => s.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur.clone())
}

/// Config key `key`'s value as text, with `${other.key}` references inside it resolved
/// against the same config (`name=${lr}`), as OmegaConf resolves them for Hydra. A reference
/// that is not a config key (a resolver such as `${oc.env:HOME}`), a cycle, or an expansion
/// past 64 KiB leaves the value as written.
pub fn config_text(config: &Value, key: &str) -> Option<String> {
    use std::cell::{Cell, RefCell};
    fn resolve(config: &Value, key: &str, open: &RefCell<Vec<String>>, left: &Cell<usize>) -> Option<String> {
        let value = lookup(config, key)?;
        let text = match &value {
            Value::String(s) if s.contains("${") => {
                if open.borrow().iter().any(|k| k == key) {
                    return None; // a cycle
                }
                open.borrow_mut().push(key.to_string());
                let out = interpolate(s, &|expr| resolve(config, expr, open, left).ok_or_else(String::new)).ok();
                open.borrow_mut().pop();
                out?
            }
            _ => scalar_text(&value),
        };
        // Every piece made counts, so `a: ${b}${b}`, `b: ${c}${c}`... cannot grow without end.
        left.set(left.get().checked_sub(text.len())?);
        Some(text)
    }
    let value = lookup(config, key)?;
    Some(resolve(config, key, &RefCell::new(Vec::new()), &Cell::new(64 * 1024)).unwrap_or_else(|| scalar_text(&value)))
}

/// A value as plain text for argv or a path: strings unquoted, floats as Python prints them
/// (`inf`, `1e-05`, as in the appended `key=value`), others as YAML/JSON.
pub fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => {
            n.as_f64().map(crate::grammar::python_float_repr).unwrap_or_else(|| n.to_string())
        }
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// Replace `{name}` where `lookup` knows `name`; anything else stays as written.
pub fn substitute(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if !after[..close].contains('{') => {
                let name = &after[..close];
                match lookup(name) {
                    Some(v) => out.push_str(&v),
                    None => {
                        out.push('{');
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Resolve `${...}` in `template`; the error names the interpolation and why it failed.
pub fn interpolate(
    template: &str,
    resolve: &dyn Fn(&str) -> Result<String, String>,
) -> Result<String, (String, String)> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err((rest[start..].to_string(), "missing `}`".into()));
        };
        let expr = &after[..end];
        out.push_str(&resolve(expr).map_err(|why| (format!("${{{expr}}}"), why))?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_text_resolves_references_to_other_keys() {
        let config: Value = serde_yaml::from_str(
            "lr: 0.1\nname: ${lr}\nboth: a_${name}_${lr}\nenv: ${oc.env:HOME}\nx: ${y}\ny: ${x}\n",
        )
        .unwrap();
        assert_eq!(config_text(&config, "name").as_deref(), Some("0.1"));
        assert_eq!(config_text(&config, "both").as_deref(), Some("a_0.1_0.1"));
        // Not a config key (a resolver), or a cycle: as written.
        assert_eq!(config_text(&config, "env").as_deref(), Some("${oc.env:HOME}"));
        assert_eq!(config_text(&config, "x").as_deref(), Some("${y}"));
        assert_eq!(config_text(&config, "missing"), None);
        // Growth that doubles at every level stops at the cap, as written.
        let bomb: Value =
            serde_yaml::from_str("a: ${a}${a}${a}${a}\nb: ${c}${c}\nc: ${d}${d}\nd: ${e}${e}\ne: x\n").unwrap();
        assert_eq!(config_text(&bomb, "a").as_deref(), Some("${a}${a}${a}${a}"));
        assert_eq!(config_text(&bomb, "b").as_deref(), Some("xxxxxxxx"));
    }

    #[test]
    fn scalar_text_prints_floats_as_python_does() {
        let f = |x: f64| scalar_text(&Value::Number(x.into()));
        assert_eq!([f(f64::INFINITY), f(f64::NEG_INFINITY), f(f64::NAN)], ["inf", "-inf", "nan"]);
        assert_eq!([f(1e-5), f(0.1), f(2.0), f(1e16)], ["1e-05", "0.1", "2.0", "1e+16"]);
        assert_eq!(scalar_text(&Value::Number(3.into())), "3");
    }

    #[test]
    fn override_dirname_sorts_whole_lines_as_hydra_does() {
        let overrides =
            ["task=2", "+zz=1", "lr=1", "lr2=1"].iter().map(|o| crate::grammar::parse_override(o).unwrap()).collect();
        let plan = crate::sweep::SweepPlan::new(overrides, &crate::sweep::SweepContext::new(".")).unwrap();
        let items = &plan.job(0).unwrap().items;
        let mut how = crate::OverrideDirname::default();
        assert_eq!(override_dirname(items, &how), "+zz=1,lr2=1,lr=1,task=2");
        // Matched without the prefix, as Hydra's `override.key_or_group` (hydra-core 1.3.8):
        // `zz` leaves out `+zz=1`, and `+zz` matches nothing.
        how.exclude_keys = vec!["+zz".into()];
        assert_eq!(override_dirname(items, &how), "+zz=1,lr2=1,lr=1,task=2");
        how.exclude_keys = vec!["lr".into(), "zz".into()];
        how.kv_sep = ":".into();
        how.item_sep = "/".into();
        assert_eq!(override_dirname(items, &how), "lr2:1/task:2");
    }

    #[test]
    fn placeholders_substitute_known_names_only() {
        let f = |n: &str| (n == "task").then(|| "3".to_string());
        assert_eq!(substitute("--task={task}", &f), "--task=3");
        assert_eq!(substitute("{\"a\":1}", &f), "{\"a\":1}");
        assert_eq!(substitute("{task}{task}{", &f), "33{");
    }
}
