//! Loading a config file: the seed form, the flat `_target_` form, and the app config.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use crate::compose::kind_name;
use crate::error::{ConfigError, ConfigErrorKind, Origin, did_you_mean};
use crate::launcher::{LauncherConfig, Reader, is_null};
use crate::locate::locate_key;

/// Launcher classes that mean "the joblib launcher" (old plugin name, then the current one).
pub const JOBLIB_CLASSES: &[&str] = &[
    "hydra_plugins.joblib_launcher.JoblibLauncher",
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
];

/// Default `hydra.sweep.dir`, as Hydra's.
pub const DEFAULT_SWEEP_DIR: &str = "multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}";
/// Default `hydra.sweep.subdir`, as Hydra's.
pub const DEFAULT_SWEEP_SUBDIR: &str = "${hydra.job.num}";

/// Keys Hydra writes under `hydra:` that are accepted and not used here.
const HYDRA_PASSIVE_KEYS: &[&str] = &[
    "run",
    "sweeper",
    "help",
    "hydra_help",
    "hydra_logging",
    "job_logging",
    "env",
    "mode",
    "searchpath",
    "callbacks",
    "overrides",
    "runtime",
    "verbose",
];
const HYDRA_KEYS: &[&str] = &["launcher", "sweep", "job", "output_subdir"];
const JOB_KEYS: &[&str] = &["name", "chdir", "env_set", "config"];
const DIRNAME_KEYS: &[&str] = &["kv_sep", "item_sep", "exclude_keys"];
const SWEEP_KEYS: &[&str] = &["dir", "subdir"];

/// A parsed config document, before overrides.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The file it came from.
    pub path: PathBuf,
    /// Its text, kept to point at lines in errors.
    pub text: String,
    /// The whole document.
    pub root: Value,
}

/// Which shape the launcher section was written in.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LauncherForm {
    /// No launcher section: joblib's defaults.
    Default,
    /// The seed's `class:` + `params.joblib:` form.
    Seed {
        /// The `class` value.
        class: String,
    },
    /// The current plugin's `_target_:` form with the keys directly under `hydra.launcher`.
    Flat {
        /// The `_target_` value.
        target: String,
    },
}

/// Hydra's per-run settings that orchestrator honours.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HydraSettings {
    /// `hydra.sweep.dir` (may contain `${now:...}`).
    pub sweep_dir: String,
    /// `hydra.sweep.subdir` (may contain `${hydra.job.num}` etc.).
    pub sweep_subdir: String,
    /// `hydra.job.name`; `None` = derived from the app command.
    pub job_name: Option<String>,
    /// `hydra.job.chdir`: run each job in its own dir.
    pub chdir: bool,
    /// `hydra.job.env_set`: extra environment for every job.
    pub env_set: Vec<(String, String)>,
    /// `hydra.job.config.override_dirname`: how `${hydra.job.override_dirname}` is made.
    pub override_dirname: OverrideDirname,
    /// `hydra.output_subdir`: where in a job's dir its `config.yaml`, `overrides.yaml` and
    /// `hydra.yaml` go (`.hydra`); `None` (null in the config) writes none of them.
    pub output_subdir: Option<String>,
}

/// Hydra's `hydra.job.config.override_dirname`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OverrideDirname {
    /// Between a key and its value (`=`).
    pub kv_sep: String,
    /// Between two overrides (`,`).
    pub item_sep: String,
    /// Keys left out (e.g. a seed, so that runs differing only by it share a dir name).
    pub exclude_keys: Vec<String>,
}

impl Default for OverrideDirname {
    fn default() -> Self {
        OverrideDirname { kv_sep: "=".into(), item_sep: ",".into(), exclude_keys: Vec::new() }
    }
}

impl Default for HydraSettings {
    fn default() -> Self {
        HydraSettings {
            sweep_dir: DEFAULT_SWEEP_DIR.into(),
            sweep_subdir: DEFAULT_SWEEP_SUBDIR.into(),
            job_name: None,
            chdir: false,
            env_set: Vec::new(),
            override_dirname: OverrideDirname::default(),
            output_subdir: Some(".hydra".into()),
        }
    }
}

/// Everything a sweep needs from the config, validated.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ResolvedConfig {
    /// The launcher settings.
    pub launcher: LauncherConfig,
    /// The form the launcher section was written in.
    pub form: LauncherForm,
    /// Hydra's run settings.
    pub hydra: HydraSettings,
    /// The app's own config: the document without `hydra:`.
    pub app: Value,
    /// The document's `hydra:` node after overrides, as a document of its own (`{hydra: …}`,
    /// empty without one): where the settings not typed above are looked up
    /// (`hydra.sweeper.params`, `hydra.job.chdir`, the launcher's keys as written). Not the
    /// whole document: a large config is held once, as `app`.
    pub hydra_doc: Value,
}

/// Read and parse a config file.
pub fn load_config_file(path: &Path) -> Result<LoadedConfig, ConfigError> {
    use std::io::Read;
    let origin = || Origin::File { path: path.to_path_buf(), line: None, column: None };
    let io_error = |e: std::io::Error| {
        let help = match e.kind() {
            std::io::ErrorKind::NotFound => "check the path given to --config",
            std::io::ErrorKind::InvalidData => "the config must be UTF-8 text",
            _ => "the config file must be a readable YAML file",
        };
        ConfigError::new(ConfigErrorKind::Io, format!("cannot read config file: {e}"), origin()).with_help(help)
    };
    let too_big = || {
        ConfigError::new(
            ConfigErrorKind::Io,
            format!("the config is larger than {} MiB", MAX_CONFIG_BYTES >> 20),
            origin(),
        )
        .with_help("a config is a YAML file of settings; put large data in files and pass them as `key=@path`")
    };
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        std::io::stdin().lock().take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(io_error)?;
    } else {
        // Checked before it is opened: opening a FIFO with no writer would block, and a
        // device (`/dev/zero`) never ends.
        let meta = std::fs::metadata(path).map_err(io_error)?;
        if !meta.is_file() {
            let what = if meta.is_dir() { "a directory" } else { "not a regular file (a FIFO, socket or device)" };
            return Err(ConfigError::new(
                ConfigErrorKind::Io,
                format!("cannot read config file: it is {what}"),
                origin(),
            )
            .with_help("--config takes a YAML file, or - for standard input"));
        }
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(too_big());
        }
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
            .map_err(io_error)?;
    }
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_big());
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        io_error(std::io::Error::new(std::io::ErrorKind::InvalidData, "stream did not contain valid UTF-8"))
    })?;
    load_config_str(&text, path)
}

/// The largest config read (a file or standard input): 16 MiB.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// The deepest nesting of flow collections (`[`, `{`) accepted in a config. Checked on the
/// text before it is parsed, in one pass: the YAML parser's own limit comes after it has
/// spent time quadratic in the depth.
pub const MAX_FLOW_DEPTH: usize = 64;

/// Where the text first nests flow collections deeper than [`MAX_FLOW_DEPTH`], as a byte
/// offset. Quoted scalars and comments are skipped.
fn too_deep(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    // Whether the previous byte ends a token, so that a quote or `#` here starts one.
    let mut at_token_start = true;
    while i < b.len() {
        let c = b[i];
        match c {
            b'#' if at_token_start => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' if at_token_start => {
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' if c == b'"' => i += 1,
                        b'\'' if c == b'\'' && b.get(i + 1) == Some(&b'\'') => i += 1,
                        q if q == c => break,
                        _ => {}
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at_token_start = matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b':' | b',' | b'[' | b'{' | b'-');
        i += 1;
    }
    None
}

/// Parse config text (`origin` names it in errors) and validate it as it stands.
pub fn load_config_str(text: &str, origin: &Path) -> Result<LoadedConfig, ConfigError> {
    if let Some(at) = too_deep(text) {
        let line = text[..at].bytes().filter(|c| *c == b'\n').count() + 1;
        let column = at - text[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
        return Err(ConfigError::new(
            ConfigErrorKind::Syntax,
            format!("invalid YAML: collections nested more than {MAX_FLOW_DEPTH} deep"),
            Origin::File { path: origin.to_path_buf(), line: Some(line), column: Some(column) },
        )
        .with_help("a config nests a few levels of settings; this much nesting is not a config"));
    }
    let root: Value = if text.trim().is_empty() {
        Value::Mapping(Mapping::new())
    } else {
        serde_yaml::from_str(text).map_err(|e| {
            let loc = e.location();
            ConfigError::new(
                ConfigErrorKind::Syntax,
                format!("invalid YAML: {}", strip_location(&e.to_string())),
                Origin::File {
                    path: origin.to_path_buf(),
                    line: loc.as_ref().map(|l| l.line()),
                    column: loc.as_ref().map(|l| l.column()),
                },
            )
            .with_snippet_from(text)
            .with_help("the config is YAML: `key: value` pairs, nested by indentation with spaces")
        })?
    };
    let mut root = root;
    crate::yaml11::retype(text, &mut root);
    if let Err((path, found)) = apply_merge_keys(&mut root, &mut Vec::new()) {
        let place = if path.is_empty() { "at the top level".to_string() } else { format!("in `{}`", path.join(".")) };
        // The `<<` key itself.
        let at: Vec<&str> = path.iter().map(String::as_str).chain(std::iter::once("<<")).collect();
        let (line, column) = match locate_key(text, &at) {
            Some((line, column, _)) => (Some(line), Some(column)),
            None => (None, None),
        };
        return Err(ConfigError::new(
            ConfigErrorKind::InvalidValue,
            format!("`<<` {place} merges {found}: a merge key takes a mapping or a list of mappings"),
            Origin::File { path: origin.to_path_buf(), line, column },
        )
        .with_snippet_from(text)
        .with_help("write `<<: *anchor` with an anchor on a mapping, or `<<: [*a, *b]`"));
    }
    let root = match root {
        Value::Null => Value::Mapping(Mapping::new()),
        Value::Mapping(m) => Value::Mapping(m),
        other => {
            return Err(ConfigError::new(
                ConfigErrorKind::InvalidValue,
                format!("the config must be a mapping at the top level, found {}", kind_name(&other)),
                Origin::File { path: origin.to_path_buf(), line: Some(1), column: Some(1) },
            )
            .with_help("write `key: value` lines, e.g. `task: 1` and a `hydra:` section"));
        }
    };
    let loaded = LoadedConfig { path: origin.to_path_buf(), text: text.to_string(), root };
    loaded.resolve(&HashMap::new())?;
    Ok(loaded)
}

/// Apply YAML merge keys (`<<: *base`, `<<: [*a, *b]`) as PyYAML (6.0.3 and later) does for
/// Hydra: the merged pairs come first, in the listed order, an earlier mapping winning a key
/// two of them hold, and the mapping's own keys override them in place. Nested merges are
/// applied first. On a `<<` whose value is not a mapping or a list of mappings, the path of
/// the mapping holding it and what it held.
fn apply_merge_keys(value: &mut Value, path: &mut Vec<String>) -> Result<(), (Vec<String>, &'static str)> {
    match value {
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                path.push(k.as_str().map_or_else(|| crate::launcher::python_str(k), str::to_string));
                apply_merge_keys(v, path)?;
                path.pop();
            }
            // `shift_remove`: `remove` would move the last key into its place, and the order is
            // the document's (PyYAML keeps it).
            let Some(merge) = map.shift_remove("<<") else { return Ok(()) };
            let sources = match merge {
                Value::Mapping(m) => vec![m],
                Value::Sequence(items) => {
                    let mut maps = Vec::with_capacity(items.len());
                    for item in items {
                        match item {
                            Value::Mapping(m) => maps.push(m),
                            other => return Err((path.clone(), kind_name(&other))),
                        }
                    }
                    maps
                }
                other => return Err((path.clone(), kind_name(&other))),
            };
            let mut merged = Mapping::new();
            for (k, v) in sources.into_iter().flatten() {
                if !merged.contains_key(&k) {
                    merged.insert(k, v);
                }
            }
            for (k, v) in std::mem::take(map) {
                merged.insert(k, v);
            }
            *map = merged;
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                apply_merge_keys(v, path)?;
                path.pop();
            }
        }
        Value::Tagged(t) => apply_merge_keys(&mut t.value, path)?,
        _ => {}
    }
    Ok(())
}

fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

impl LoadedConfig {
    /// Validate `root` (possibly changed by overrides) into typed settings.
    ///
    /// `overridden` maps dotted keys set on the command line to the override text, so that an
    /// error about such a key points at the override instead of the file.
    pub fn resolve(&self, overridden: &HashMap<String, String>) -> Result<ResolvedConfig, ConfigError> {
        self.resolve_root(self.root.clone(), overridden)
    }

    /// Like [`LoadedConfig::resolve`], for a document derived from this one, which is
    /// taken apart into the resolved config's `app` and `hydra_doc` (not copied: a large
    /// config is held once).
    pub fn resolve_root(
        &self,
        root: Value,
        overridden: &HashMap<String, String>,
    ) -> Result<ResolvedConfig, ConfigError> {
        let origin = |path: &[&str]| -> Origin {
            for n in (1..=path.len()).rev() {
                if let Some(text) = overridden.get(&path[..n].join(".")) {
                    return Origin::Override(text.clone());
                }
            }
            if let Some((line, column, _)) = locate_key(&self.text, path) {
                return Origin::File { path: self.path.clone(), line: Some(line), column: Some(column) };
            }
            // Not in the file: an override of a key below it made it
            // (`hydra.launcher.params.foo.bar=2` made `foo`).
            let below = format!("{}.", path.join("."));
            let mut made: Vec<(&String, &String)> = overridden.iter().filter(|(k, _)| k.starts_with(&below)).collect();
            made.sort();
            match made.first() {
                Some((_, text)) => Origin::Override((*text).clone()),
                None => Origin::File { path: self.path.clone(), line: None, column: None },
            }
        };
        resolve(root, &origin).map_err(|e| e.with_snippet_from(&self.text))
    }
}

fn resolve(root: Value, origin: &dyn Fn(&[&str]) -> Origin) -> Result<ResolvedConfig, ConfigError> {
    let reader = Reader { origin };
    let mut launcher = LauncherConfig::default();
    let mut form = LauncherForm::Default;
    let mut hydra = HydraSettings::default();
    // The document is taken apart, not copied: `app` is all of it but `hydra:`.
    let mut app = root;
    let hydra_node = match &mut app {
        // Keeping the order of the keys after it (`remove` would move the last one up).
        Value::Mapping(m) => m.shift_remove("hydra"),
        _ => None,
    };
    if let Some(node) = &hydra_node {
        let map = expect_map(node, &["hydra"], origin)?;
        for (k, v) in map {
            let key = k.as_str().unwrap_or("");
            match key {
                "launcher" => form = launcher_section(&reader, v, &mut launcher, origin)?,
                "sweep" => {
                    let m = expect_map(v, &["hydra", "sweep"], origin)?;
                    for (sk, sv) in m {
                        let sk = check_key(sk, SWEEP_KEYS, &["hydra", "sweep"], origin)?;
                        let s = expect_str(sv, &["hydra", "sweep", sk], origin)?;
                        if sk == "dir" { hydra.sweep_dir = s } else { hydra.sweep_subdir = s }
                    }
                }
                "job" => {
                    let m = expect_map(v, &["hydra", "job"], origin)?;
                    for (jk, jv) in m {
                        let jk = check_key(jk, JOB_KEYS, &["hydra", "job"], origin)?;
                        let p = ["hydra", "job", jk];
                        match jk {
                            "name" if is_null(jv) => hydra.job_name = None,
                            "name" => hydra.job_name = Some(expect_str(jv, &p, origin)?),
                            "config" if is_null(jv) => {}
                            "config" => {
                                for (ck, cv) in expect_map(jv, &p, origin)? {
                                    let ck = check_key(ck, &["override_dirname"], &p, origin)?;
                                    let q = ["hydra", "job", "config", ck];
                                    if is_null(cv) {
                                        continue;
                                    }
                                    for (dk, dv) in expect_map(cv, &q, origin)? {
                                        let dk = check_key(dk, DIRNAME_KEYS, &q, origin)?;
                                        let r = ["hydra", "job", "config", "override_dirname", dk];
                                        let d = &mut hydra.override_dirname;
                                        match dk {
                                            "kv_sep" => d.kv_sep = expect_str(dv, &r, origin)?,
                                            "item_sep" => d.item_sep = expect_str(dv, &r, origin)?,
                                            _ if is_null(dv) => d.exclude_keys.clear(),
                                            _ => {
                                                let keys = dv.as_sequence().ok_or_else(|| {
                                                    invalid(
                                                        &r,
                                                        origin,
                                                        "exclude_keys must be a list of keys, e.g. [seed]",
                                                    )
                                                })?;
                                                d.exclude_keys = keys
                                                    .iter()
                                                    .map(|k| expect_str(k, &r, origin))
                                                    .collect::<Result<_, _>>()?;
                                            }
                                        }
                                    }
                                }
                            }
                            "chdir" => {
                                hydra.chdir = match jv {
                                    _ if is_null(jv) => false,
                                    Value::Bool(b) => *b,
                                    _ => {
                                        return Err(invalid(&p, origin, "hydra.job.chdir must be true, false or None"));
                                    }
                                }
                            }
                            _ => {
                                if !is_null(jv) {
                                    for (ek, ev) in expect_map(jv, &p, origin)? {
                                        let name = ek.as_str().unwrap_or_default().to_string();
                                        if name.is_empty() || name.contains('=') || name.contains('\0') {
                                            return Err(invalid(
                                                &p,
                                                origin,
                                                &format!(
                                                    "hydra.job.env_set: `{name}` is not a variable name (empty, or with `=` or NUL)"
                                                ),
                                            ));
                                        }
                                        // Python's str(), as Hydra sets it: `on` is `True`.
                                        let val = match crate::launcher::python_scalar_str(ev) {
                                            Some(text) => text,
                                            None => {
                                                return Err(invalid(
                                                    &p,
                                                    origin,
                                                    "hydra.job.env_set values must be scalars",
                                                ));
                                            }
                                        };
                                        hydra.env_set.push((name, val));
                                    }
                                }
                            }
                        }
                    }
                }
                "output_subdir" => {
                    let p = ["hydra", "output_subdir"];
                    hydra.output_subdir = if is_null(v) {
                        None
                    } else {
                        let sub = expect_str(v, &p, origin)?;
                        let path = Path::new(&sub);
                        let inside = path.components().all(|c| matches!(c, std::path::Component::Normal(_)));
                        if sub.is_empty() || !inside {
                            return Err(invalid(
                                &p,
                                origin,
                                "hydra.output_subdir must be a relative path inside the job's dir (e.g. .hydra), or null for no per-job files",
                            ));
                        }
                        Some(sub)
                    };
                }
                k if HYDRA_PASSIVE_KEYS.contains(&k) => {}
                other => {
                    let all: Vec<&str> = HYDRA_KEYS.iter().chain(HYDRA_PASSIVE_KEYS).copied().collect();
                    let mut err = ConfigError::new(
                        ConfigErrorKind::UnknownKey,
                        format!("unknown key `{other}` in `hydra`"),
                        origin(&["hydra", other]),
                    );
                    err = match did_you_mean(other, &all) {
                        Some(s) => err.with_help(format!(
                            "did you mean `{s}`? orchestrator reads hydra.launcher, hydra.sweep and hydra.job"
                        )),
                        None => err.with_help("orchestrator reads hydra.launcher, hydra.sweep and hydra.job"),
                    };
                    return Err(err);
                }
            }
        }
    }
    let mut hydra_doc = Mapping::new();
    if let Some(node) = hydra_node {
        hydra_doc.insert("hydra".into(), node);
    }
    Ok(ResolvedConfig { launcher, form, hydra, app, hydra_doc: Value::Mapping(hydra_doc) })
}

fn launcher_section(
    reader: &Reader<'_>,
    v: &Value,
    launcher: &mut LauncherConfig,
    origin: &dyn Fn(&[&str]) -> Origin,
) -> Result<LauncherForm, ConfigError> {
    const BASE: &[&str] = &["hydra", "launcher"];
    if is_null(v) {
        return Ok(LauncherForm::Default);
    }
    let map = expect_map(v, BASE, origin)?;
    let class = map.get("class");
    let target = map.get("_target_");
    let form = match (class, target) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                &["hydra", "launcher", "_target_"],
                origin,
                "use either `class` + `params` (the seed form) or `_target_` with the keys beside it, not both",
            ));
        }
        (Some(c), None) => {
            let c = check_class(c, &["hydra", "launcher", "class"], origin)?;
            seed_section(reader, map, &["class", "params", "orchestrator"], launcher, origin)?;
            LauncherForm::Seed { class: c }
        }
        (None, Some(t)) => {
            let t = check_class(t, &["hydra", "launcher", "_target_"], origin)?;
            flat_section(reader, map, launcher, origin)?;
            LauncherForm::Flat { target: t }
        }
        // No class: keys set by overrides on a config without a launcher section
        // (`hydra.launcher.params.joblib.n_jobs=2` or `hydra.launcher.n_jobs=2`).
        (None, None) if map.contains_key("params") => {
            seed_section(reader, map, &["params", "orchestrator"], launcher, origin)?;
            LauncherForm::Default
        }
        (None, None) => {
            flat_section(reader, map, launcher, origin)?;
            LauncherForm::Default
        }
    };
    Ok(form)
}

/// The seed form: `params.joblib` and `orchestrator` beside `class`.
fn seed_section(
    reader: &Reader<'_>,
    map: &Mapping,
    known: &[&str],
    launcher: &mut LauncherConfig,
    origin: &dyn Fn(&[&str]) -> Origin,
) -> Result<(), ConfigError> {
    for (k, val) in map {
        match check_key(k, known, &["hydra", "launcher"], origin)? {
            "params" => seed_params(reader, val, launcher, origin)?,
            "orchestrator" => orchestrator(reader, val, launcher, origin)?,
            _ => {}
        }
    }
    Ok(())
}

/// The flat form: joblib's keys and `orchestrator` directly under `hydra.launcher`.
fn flat_section(
    reader: &Reader<'_>,
    map: &Mapping,
    launcher: &mut LauncherConfig,
    origin: &dyn Fn(&[&str]) -> Origin,
) -> Result<(), ConfigError> {
    reader.joblib_params(&["hydra", "launcher"], map, launcher)?;
    match map.get("orchestrator") {
        Some(o) => orchestrator(reader, o, launcher, origin),
        None => Ok(()),
    }
}

/// The seed form's `params:` mapping, whose only key is `joblib`.
fn seed_params(
    reader: &Reader<'_>,
    val: &Value,
    launcher: &mut LauncherConfig,
    origin: &dyn Fn(&[&str]) -> Origin,
) -> Result<(), ConfigError> {
    let pm = expect_map(val, &["hydra", "launcher", "params"], origin)?;
    for (pk, pv) in pm {
        let pk = check_key(pk, &["joblib"], &["hydra", "launcher", "params"], origin)?;
        let jm = expect_map(pv, &["hydra", "launcher", "params", pk], origin)?;
        reader.joblib_params(&["hydra", "launcher", "params", "joblib"], jm, launcher)?;
    }
    Ok(())
}

fn orchestrator(
    reader: &Reader<'_>,
    v: &Value,
    launcher: &mut LauncherConfig,
    origin: &dyn Fn(&[&str]) -> Origin,
) -> Result<(), ConfigError> {
    if is_null(v) {
        return Ok(());
    }
    let path = ["hydra", "launcher", "orchestrator"];
    reader.orchestrator_params(&path, expect_map(v, &path, origin)?, launcher)
}

fn check_class(v: &Value, path: &[&str], origin: &dyn Fn(&[&str]) -> Origin) -> Result<String, ConfigError> {
    let s = v.as_str().unwrap_or_default();
    if JOBLIB_CLASSES.contains(&s) {
        return Ok(s.to_string());
    }
    Err(ConfigError::new(ConfigErrorKind::InvalidValue, format!("unsupported launcher `{s}`"), origin(path))
        .with_help(format!("orchestrator implements the joblib launcher: {}", JOBLIB_CLASSES.join(" or "))))
}

fn check_key<'a>(
    k: &'a Value,
    known: &[&str],
    base: &[&str],
    origin: &dyn Fn(&[&str]) -> Origin,
) -> Result<&'a str, ConfigError> {
    let key = k.as_str().unwrap_or("");
    if known.contains(&key) {
        return Ok(key);
    }
    let mut path = base.to_vec();
    path.push(key);
    let err = ConfigError::new(
        ConfigErrorKind::UnknownKey,
        format!("unknown key `{key}` in `{}`", base.join(".")),
        origin(&path),
    );
    Err(match did_you_mean(key, known) {
        Some(s) => err.with_help(format!("did you mean `{s}`? known keys: {}", known.join(", "))),
        None => err.with_help(format!("known keys: {}", known.join(", "))),
    })
}

fn expect_map<'a>(v: &'a Value, path: &[&str], origin: &dyn Fn(&[&str]) -> Origin) -> Result<&'a Mapping, ConfigError> {
    match v {
        Value::Mapping(m) => Ok(m),
        other => Err(ConfigError::new(
            ConfigErrorKind::InvalidValue,
            format!("`{}` must be a mapping, found {}", path.join("."), kind_name(other)),
            origin(path),
        )
        .with_help("nest its keys below it, indented")),
    }
}

fn expect_str(v: &Value, path: &[&str], origin: &dyn Fn(&[&str]) -> Origin) -> Result<String, ConfigError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(invalid(path, origin, &format!("`{}` must be a string", path.join(".")))),
    }
}

fn invalid(path: &[&str], origin: &dyn Fn(&[&str]) -> Origin, msg: &str) -> ConfigError {
    ConfigError::new(ConfigErrorKind::InvalidValue, msg.to_string(), origin(path))
}
