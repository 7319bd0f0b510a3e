//! Large arguments of a sweep: `key=@file` values and values bigger than `max_nbytes`.
//!
//! A value bigger than `max_nbytes` is never put in argv or the environment: it is spilled
//! once into the [`SpillStore`] and every job that uses it gets `key=@<path>` and the same
//! file. A smaller value goes inline (`key=<value>`) when argv can carry it (no NUL byte,
//! valid UTF-8, under Linux's 128 KiB per-argument limit), otherwise into a per-job file in
//! the job's `.hydra/args/`. With `max_nbytes: null` nothing is shared: every job gets its
//! own copy, as in joblib.
//!
//! `key=@path` files are snapshotted when the sweep starts (before any job), so later edits
//! of the file do not change the jobs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use orchestrator::spill::{ArgInfo, SpillError, SpillStore, Spilled, mode_name, sanitize};
use orchestrator::temp::TempFolder;
use orchestrator_config::MmapMode;
use orchestrator_config::grammar::{Element, Override, OverrideValue, Sweep};

/// Longest value passed inline in argv: Linux refuses a single argument over 128 KiB
/// (`MAX_ARG_STRLEN`), key and `=` included.
pub const INLINE_MAX: usize = 128 * 1024 - 4096;

/// Most text one job's values may carry inline, counted as JSON text: every inline value is
/// in `ORCHESTRATOR_OVERRIDES` too, and Linux refuses an environment string over 128 KiB.
/// Values past it go to files (`key=@path`), so that a job never fails to start with E2BIG.
pub const INLINE_BUDGET: usize = 96 * 1024;

/// What a value costs of the inline budget: its length as JSON text (escapes included), as
/// serde_json writes it, counted without writing it (this runs for every value of every job).
fn inline_cost(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// Largest file held in memory for per-job copies; bigger ones are copied from the snapshot.
const IN_MEMORY_MAX: u64 = 16 << 20;

#[derive(Debug)]
enum Snapshot {
    Bytes(Arc<Vec<u8>>),
    Stored(Spilled),
}

/// The sweep's large arguments.
#[derive(Debug)]
pub struct LargeArgs {
    max_nbytes: Option<u64>,
    mode: Option<MmapMode>,
    temp: TempFolder,
    store: OnceLock<Result<Arc<SpillStore>, String>>,
    files: HashMap<String, Snapshot>,
    /// Values of the app config (dotted key → spill) bigger than `max_nbytes`.
    config_values: Vec<(String, Spilled)>,
}

/// Every `@path` string among the overrides' values (lists and sweeps included).
pub fn file_refs(overrides: &[Override]) -> Vec<String> {
    fn element(e: &Element, out: &mut Vec<String>) {
        match e {
            // Only a whole value: `resolve` hands over nothing inside a list or dict, so an
            // `@name` there is plain text, as in Hydra.
            Element::Str { value, quote: None } if value.len() > 1 && value.starts_with('@') => out.push(value.clone()),
            _ => {}
        }
    }
    fn sweep(s: &Sweep, out: &mut Vec<String>) {
        match s {
            Sweep::Choice(items) => items.iter().for_each(|i| element(i, out)),
            Sweep::Chain(parts) => parts.iter().for_each(|p| sweep(p, out)),
            Sweep::Sort { inner, .. } | Sweep::Shuffle(inner) | Sweep::Cast { inner, .. } => sweep(inner, out),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for o in overrides {
        match &o.value {
            Some(OverrideValue::Element(e)) => element(e, &mut out),
            Some(OverrideValue::Sweep(s)) => sweep(s, &mut out),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

impl LargeArgs {
    /// Nothing snapshotted yet; the spill store is created on first need.
    pub fn new(max_nbytes: Option<u64>, mode: Option<MmapMode>, temp: TempFolder) -> Self {
        LargeArgs { max_nbytes, mode, temp, store: OnceLock::new(), files: HashMap::new(), config_values: Vec::new() }
    }

    /// Where spills go and why.
    pub fn temp_folder(&self) -> &TempFolder {
        &self.temp
    }

    /// The spill store, if one was needed.
    pub fn store(&self) -> Option<Arc<SpillStore>> {
        self.store.get().and_then(|s| s.as_ref().ok()).cloned()
    }

    fn store_or_create(&self) -> Result<&Arc<SpillStore>, SpillError> {
        let made = self
            .store
            .get_or_init(|| SpillStore::create(&self.temp.path, self.mode).map(Arc::new).map_err(|e| e.to_string()));
        made.as_ref()
            .map_err(|e| SpillError::Io { path: self.temp.path.clone(), source: std::io::Error::other(e.clone()) })
    }

    fn spills(&self, size: u64) -> bool {
        self.max_nbytes.is_some_and(|m| size > m)
    }

    /// Snapshot every `@path` (relative to `base`) before the sweep starts.
    pub fn snapshot(&mut self, refs: &[String], base: &Path) -> Result<(), SpillError> {
        for r in refs {
            let path = base.join(&r[1..]);
            let size = std::fs::metadata(&path).map_err(|source| SpillError::Io { path: path.clone(), source })?.len();
            let snap = if self.spills(size) || size > IN_MEMORY_MAX {
                Snapshot::Stored(self.store_or_create()?.put_file(&path, true)?)
            } else {
                let bytes = std::fs::read(&path).map_err(|source| SpillError::Io { path: path.clone(), source })?;
                Snapshot::Bytes(Arc::new(bytes))
            };
            self.files.insert(r.clone(), snap);
        }
        Ok(())
    }

    /// Spill every value of the app config bigger than `max_nbytes` (its YAML text), once:
    /// jobs then find `@<path>` in their `config.yaml` and the file in `ORCHESTRATOR_ARGS`,
    /// instead of N copies of the value. The smallest enclosing value that is too big is
    /// spilled whole only when none of its parts is too big on its own.
    pub fn spill_config(&mut self, app: &serde_yaml::Value) -> Result<(), SpillError> {
        let Some(max) = self.max_nbytes else { return Ok(()) };
        let mut found = Vec::new();
        large_values(app, String::new(), max, &mut found);
        for (key, text) in found {
            let spilled = self.store_or_create()?.put_bytes(text.as_bytes(), true)?;
            self.config_values.push((key, spilled));
        }
        Ok(())
    }

    /// Replace the app config's large values in a job's `config` (unless the job overrode
    /// them) by `@<path>`, and describe them for `ORCHESTRATOR_ARGS`.
    pub fn apply_to_config(
        &self,
        config: &mut serde_yaml::Value,
        overridden: &[&str],
        args: &mut serde_json::Map<String, serde_json::Value>,
    ) {
        let mode = mode_name(self.mode);
        for (key, s) in &self.config_values {
            let touched = overridden
                .iter()
                .any(|o| o == key || key.starts_with(&format!("{o}.")) || o.starts_with(&format!("{key}.")));
            if touched {
                continue;
            }
            if let Some(slot) = lookup_mut(config, key) {
                *slot = serde_yaml::Value::String(format!("@{}", s.path.display()));
                let info = ArgInfo { path: s.path.clone(), mode, size: s.size, shared: true };
                args.insert(key.clone(), serde_json::to_value(&info).unwrap_or_default());
            }
        }
    }

    /// What job argument `key` with value `value` becomes: `None` when it is passed as is;
    /// otherwise the argv value (inline text or `@path`) and, for files, the `ORCHESTRATOR_ARGS`
    /// entry. Per-job files go into `job_dir/.hydra/args/`. `budget` is what the job's inline
    /// values may still take (start from [`INLINE_BUDGET`]).
    pub fn resolve(
        &self,
        key: &str,
        value: &Element,
        job_dir: &Path,
        budget: &mut usize,
    ) -> Result<Option<(String, Option<ArgInfo>)>, SpillError> {
        if let Element::Str { value: s, quote: None } = value
            && let Some(snap) = self.files.get(s)
        {
            return self.place(key, snap, job_dir, budget).map(Some);
        }
        let text = value.to_override_string();
        if text.len() <= INLINE_MAX && !self.spills(text.len() as u64) {
            let cost = inline_cost(&text);
            if cost <= *budget {
                *budget -= cost;
                return Ok(None);
            }
        }
        // A value too big for argv: its text, as the job would have received it.
        let snap = if self.spills(text.len() as u64) {
            Snapshot::Stored(self.store_or_create()?.put_bytes(text.as_bytes(), true)?)
        } else {
            Snapshot::Bytes(Arc::new(text.into_bytes()))
        };
        // Past the budget: a file, whatever its size.
        self.place(key, &snap, job_dir, &mut 0).map(Some)
    }

    fn place(
        &self,
        key: &str,
        snap: &Snapshot,
        job_dir: &Path,
        budget: &mut usize,
    ) -> Result<(String, Option<ArgInfo>), SpillError> {
        let mode = mode_name(self.mode);
        match snap {
            Snapshot::Stored(s) if self.spills(s.size) => {
                let info = ArgInfo { path: s.path.clone(), mode, size: s.size, shared: true };
                Ok((format!("@{}", s.path.display()), Some(info)))
            }
            // Text starting with `@` would read as a path to the workers: such text goes in a file.
            Snapshot::Bytes(b)
                if b.len() <= INLINE_MAX
                    && !b.contains(&0)
                    && !b.starts_with(b"@")
                    && std::str::from_utf8(b).is_ok_and(|t| inline_cost(t) <= *budget) =>
            {
                let text = String::from_utf8_lossy(b).into_owned();
                *budget -= inline_cost(&text);
                Ok((text, None))
            }
            other => {
                let dir = job_dir.join(".hydra").join("args");
                std::fs::create_dir_all(&dir).map_err(|source| SpillError::Io { path: dir.clone(), source })?;
                let dest = dir.join(sanitize(key));
                let size = match other {
                    Snapshot::Bytes(b) => {
                        std::fs::write(&dest, b.as_slice())
                            .map_err(|source| SpillError::Io { path: dest.clone(), source })?;
                        b.len() as u64
                    }
                    Snapshot::Stored(s) => {
                        std::fs::copy(&s.path, &dest)
                            .map_err(|source| SpillError::Io { path: dest.clone(), source })?;
                        // The copy keeps the snapshot's read-only bits; the job owns its copy.
                        let _ = std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o600));
                        s.size
                    }
                };
                let info = ArgInfo { path: dest.clone(), mode, size, shared: false };
                Ok((format!("@{}", dest.display()), Some(info)))
            }
        }
    }
}

/// Values (dotted key, YAML text) bigger than `max`, as small as possible.
fn large_values(v: &serde_yaml::Value, key: String, max: u64, out: &mut Vec<(String, String)>) {
    let text = match v {
        serde_yaml::Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other).unwrap_or_default(),
    };
    if text.len() as u64 <= max {
        return;
    }
    if let serde_yaml::Value::Mapping(m) = v {
        let before = out.len();
        for (k, child) in m {
            let Some(k) = k.as_str() else { continue };
            let child_key = if key.is_empty() { k.to_string() } else { format!("{key}.{k}") };
            large_values(child, child_key, max, out);
        }
        if out.len() > before || key.is_empty() {
            return;
        }
    }
    if !key.is_empty() {
        out.push((key, text));
    }
}

fn lookup_mut<'a>(v: &'a mut serde_yaml::Value, dotted: &str) -> Option<&'a mut serde_yaml::Value> {
    let mut cur = v;
    for part in dotted.split('.') {
        cur = match cur {
            serde_yaml::Value::Mapping(m) => m.get_mut(part)?,
            _ => return None,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_config::grammar::parse_override;

    #[test]
    fn large_config_values_are_found_smallest_first() {
        let doc: serde_yaml::Value = serde_yaml::from_str(&format!(
            "small: 1\nbig: {}\nnest:\n  a: {}\n  b: 2\n",
            "x".repeat(50),
            "y".repeat(50)
        ))
        .unwrap();
        let mut out = Vec::new();
        large_values(&doc, String::new(), 20, &mut out);
        let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["big", "nest.a"]);
    }

    #[test]
    fn inline_cost_is_the_json_length() {
        for t in ["", "task", "a\"b\\c", "line\nbreak\ttab\r", "\u{1}\u{8}\u{c}\u{1f}\u{7f}", "é ü 名"] {
            assert_eq!(inline_cost(t), serde_json::to_string(t).unwrap().len(), "{t:?}");
        }
    }

    #[test]
    fn sanitized_names_never_collide() {
        assert_eq!(sanitize("db@pkg"), "db%40pkg");
        assert_eq!(sanitize("db_pkg"), "db_pkg");
        assert_eq!(sanitize("a b/c"), "a%20b%2Fc");
        assert_eq!(sanitize("ü"), "%C3%BC");
        let long = "é".repeat(100);
        assert!(sanitize(&long).len() <= 200 && sanitize(&long) != sanitize(&"é".repeat(101)));
    }

    #[test]
    fn file_refs_are_whole_values_and_sweep_values() {
        let o =
            ["data=@a.bin,@b.bin", "x=@c", "y=[@d,2]", "z='@quoted'", "w=plain"].map(|s| parse_override(s).unwrap());
        assert_eq!(file_refs(&o), ["@a.bin", "@b.bin", "@c"]);
    }
}
