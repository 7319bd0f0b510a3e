//! The seed config read exactly as written, the flat form, and error messages.

use std::path::Path;
use std::time::Duration;

use orchestrator_config::{
    BatchSize, ConfigErrorKind, LauncherForm, MmapMode, NJobs, Origin, PreDispatch, Prefer, load_config_file,
    load_config_str,
};

fn seed_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/joblib.yaml")
}

#[test]
fn seed_file_is_the_verbatim_seed() {
    let ours = std::fs::read_to_string(seed_path()).unwrap();
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/seed-joblib.yaml");
    if let Ok(reference) = std::fs::read_to_string(seed) {
        assert_eq!(ours, reference);
    }
    assert!(ours.contains("backend: None"));
}

#[test]
fn seed_values_read_with_joblib_semantics() {
    let loaded = load_config_file(&seed_path()).unwrap();
    let r = loaded.resolve(&Default::default()).unwrap();
    let l = &r.launcher;
    assert_eq!(r.form, LauncherForm::Seed { class: "hydra_plugins.joblib_launcher.JoblibLauncher".into() });
    assert_eq!(l.n_jobs, NJobs(Some(-1)));
    assert_eq!(l.backend, None, "`None` is null, not the string");
    assert_eq!(l.prefer, Some(Prefer::Processes));
    assert!(!l.require_sharedmem);
    assert_eq!(l.verbose, 0);
    assert_eq!(l.timeout, None);
    assert_eq!(l.pre_dispatch, PreDispatch::Expr("2*n_jobs".into()));
    assert_eq!(l.pre_dispatch.resolve(2), 4);
    assert_eq!(l.batch_size, BatchSize::Auto);
    assert_eq!(l.temp_folder, None);
    assert_eq!(l.max_nbytes, Some(1_048_576), "1M is 1024-based");
    assert_eq!(l.mmap_mode, Some(MmapMode::R));
    let banner: Vec<String> = l.banner.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(
        banner.join(","),
        "n_jobs=-1,backend=None,prefer=processes,require=None,verbose=0,timeout=None,pre_dispatch=2*n_jobs,batch_size=auto,temp_folder=None,max_nbytes=1M,mmap_mode=r"
    );
    assert_eq!(r.app, serde_yaml::Value::Mapping(Default::default()));
}

#[test]
fn flat_form_and_durations() {
    let text = "task: 1\nhydra:\n  launcher:\n    _target_: hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher\n    n_jobs: -2\n    timeout: 1h 30m\n    max_nbytes: null\n    mmap_mode: w+\n    orchestrator:\n      grace_period: 2.5\n      halt: soon\n";
    let r = load_config_str(text, Path::new("t.yaml")).unwrap().resolve(&Default::default()).unwrap();
    assert!(matches!(r.form, LauncherForm::Flat { .. }));
    assert_eq!(r.launcher.n_jobs.resolve(8), 7);
    assert_eq!(r.launcher.timeout, Some(Duration::from_secs(5400)));
    assert_eq!(r.launcher.max_nbytes, None);
    assert_eq!(r.launcher.mmap_mode, Some(MmapMode::RPlus), "w+ is read as r+");
    assert_eq!(r.launcher.grace_period, Duration::from_millis(2500));
    assert_eq!(r.launcher.halt, orchestrator_config::HaltPolicy::Soon);
    assert_eq!(r.app["task"], serde_yaml::Value::from(1));
}

#[test]
fn float_timeout_and_tilde_null() {
    let text = "hydra:\n  launcher:\n    n_jobs: ~\n    timeout: 2.0\n";
    let r = load_config_str(text, Path::new("t.yaml")).unwrap().resolve(&Default::default()).unwrap();
    assert_eq!(r.launcher.n_jobs.resolve(4), 1, "null n_jobs means 1");
    assert_eq!(r.launcher.timeout, Some(Duration::from_secs(2)));
    assert!(r.launcher.banner.iter().any(|(k, v)| k == "timeout" && v == "2.0"), "Python str() of a float");
}

#[test]
fn unknown_key_points_at_line_and_column_with_suggestion() {
    let text = "hydra:\n  launcher:\n    class: hydra_plugins.joblib_launcher.JoblibLauncher\n    params:\n      joblib:\n        n_job: 2\n";
    let e = load_config_str(text, Path::new("c.yaml")).unwrap_err();
    assert_eq!(e.kind(), ConfigErrorKind::UnknownKey);
    assert_eq!(e.origin(), &Origin::File { path: "c.yaml".into(), line: Some(6), column: Some(9) });
    assert!(e.help().unwrap().contains("did you mean `n_jobs`?"));
    let shown = e.to_string();
    assert!(shown.contains(" 6 |         n_job: 2"), "{shown}");
    assert!(shown.contains("^"), "{shown}");
}

#[test]
fn yaml_syntax_error_has_a_position() {
    let e = load_config_str("a: [1, 2\nb: 3\n", Path::new("c.yaml")).unwrap_err();
    assert_eq!(e.kind(), ConfigErrorKind::Syntax);
    assert!(matches!(e.origin(), Origin::File { line: Some(_), .. }), "{e}");
}

#[test]
fn plain_scalars_read_as_hydra_reads_them() {
    // Plain scalars read as Hydra reads them (PyYAML's YAML 1.1, with OmegaConf's float
    // rule): each as `OmegaConf.load` gave it for this text (omegaconf 2.3.1).
    use serde_yaml::Value;
    let text =
        "a: yes\nb: on\nc: 0755\nd: true\ne: 0o17\nf: 1_000\ng: 1:20\nh: 1e3\ni: 0x1F\nj: None\nk: ~\nl: 2024-01-02\n";
    let r = load_config_str(text, Path::new("t.yaml")).unwrap().resolve(&Default::default()).unwrap();
    let cases: [(&str, Value); 12] = [
        ("a", true.into()),
        ("b", true.into()),
        ("c", 493.into()),
        ("d", true.into()),
        ("e", "0o17".into()),
        ("f", 1000.into()),
        ("g", 80.into()),
        ("h", 1000.0.into()),
        ("i", 31.into()),
        ("j", "None".into()), // only the launcher section reads None as null
        ("k", Value::Null),
        ("l", "2024-01-02".into()), // OmegaConf drops PyYAML's timestamp rule
    ];
    for (key, want) in cases {
        assert_eq!(r.app[key], want, "{key}");
    }
}

#[test]
fn wrong_types_name_the_key_and_the_allowed_values() {
    for (line, want) in [
        ("n_jobs: 0", "n_jobs == 0"),
        ("n_jobs: [1]", "invalid n_jobs"),
        ("backend: dask", "allowed values: None, loky"),
        ("max_nbytes: 1m", "invalid max_nbytes"),
        ("pre_dispatch: 2*n_jobs +", "invalid pre_dispatch"),
        ("batch_size: -3", "batch_size must be"),
        ("mmap_mode: x", "invalid mmap_mode"),
        ("timeout: forever", "invalid timeout"),
        ("timeout: 18446744073709551615s", "too long"),
    ] {
        let text = format!("hydra:\n  launcher:\n    {line}\n");
        let e = load_config_str(&text, Path::new("t.yaml")).unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains(want), "{line}: {shown}");
        assert!(matches!(e.origin(), Origin::File { line: Some(3), .. }), "{line}: {shown}");
    }
}

#[test]
fn a_float_max_nbytes_is_cut_to_its_integer_part_as_hydra_does() {
    // Hydra's process_joblib_cfg hands joblib int(value).
    for (line, want) in [("max_nbytes: 1e6", 1_000_000), ("max_nbytes: 1048576.0", 1_048_576), ("max_nbytes: 10.9", 10)]
    {
        let text = format!("hydra:\n  launcher:\n    {line}\n");
        let r = load_config_str(&text, Path::new("t.yaml")).unwrap().resolve(&Default::default()).unwrap();
        assert_eq!(r.launcher.max_nbytes, Some(want), "{line}");
    }
    let e = load_config_str("hydra:\n  launcher:\n    max_nbytes: -1.5\n", Path::new("t.yaml")).unwrap_err();
    assert!(e.to_string().contains("invalid max_nbytes"), "{e}");
}

#[test]
fn merge_keys_are_applied_as_hydra_s_pyyaml_does() {
    // The expected text is what `OmegaConf.to_yaml(OmegaConf.load(...))` printed for this
    // file (hydra-core 1.3, PyYAML 6.0.4): merged pairs first, in the listed order, an
    // earlier mapping winning; the mapping's own keys override in place.
    let text = "\
a: &a
  x: 1
  y: 2
b: &b
  y: 20
  z: 30
one:
  w: 0
  <<: *a
  x: 10
two:
  <<: [*a, *b]
  q: 5
nested:
  inner:
    <<: *b
    z: 31
lst:
  - <<: *a
    k: 1
";
    let r = load_config_str(text, Path::new("m.yaml")).unwrap().resolve(&Default::default()).unwrap();
    let shown = serde_yaml::to_string(&r.app).unwrap();
    let expected = "\
a:
  x: 1
  y: 2
b:
  y: 20
  z: 30
one:
  x: 10
  y: 2
  w: 0
two:
  x: 1
  y: 2
  z: 30
  q: 5
nested:
  inner:
    y: 20
    z: 31
lst:
- x: 1
  y: 2
  k: 1
";
    assert_eq!(shown, expected);
}

#[test]
fn a_merge_key_on_a_scalar_is_a_config_error_with_its_place() {
    let text = "base: 1\nderived:\n  <<: 3\n  y: 2\n";
    let e = load_config_str(text, Path::new("m.yaml")).unwrap_err();
    assert_eq!(e.kind(), ConfigErrorKind::InvalidValue);
    assert!(e.to_string().contains("`<<` in `derived` merges an integer"), "{e}");
    assert_eq!(e.origin(), &Origin::File { path: "m.yaml".into(), line: Some(3), column: Some(3) });
    let e = load_config_str("d:\n  <<: [{a: 1}, 2]\n", Path::new("m.yaml")).unwrap_err();
    assert!(e.to_string().contains("`<<` in `d` merges an integer"), "{e}");
    let e = load_config_str("<<: 3\na: 1\n", Path::new("m.yaml")).unwrap_err();
    assert!(e.to_string().contains("`<<` at the top level merges an integer"), "{e}");
    assert_eq!(e.origin(), &Origin::File { path: "m.yaml".into(), line: Some(1), column: Some(1) });
}

#[test]
fn env_set_values_are_python_strings_as_hydra_sets_them() {
    let text = "hydra:\n  job:\n    env_set:\n      A: on\n      B: false\n      C: 1.0e3\n      D: 7\n      E: text\n      F: 1.0e-06\n";
    let r = load_config_str(text, Path::new("e.yaml")).unwrap().resolve(&Default::default()).unwrap();
    let got: Vec<(&str, &str)> = r.hydra.env_set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(got, [("A", "True"), ("B", "False"), ("C", "1000.0"), ("D", "7"), ("E", "text"), ("F", "1e-06")]);
}

/// The app's keys keep the document's order, whatever place `hydra:` had among them, and so
/// do a mapping's keys after a merge key (`<<`), as PyYAML and so Hydra give them.
#[test]
fn the_app_and_merged_mappings_keep_the_document_s_key_order() {
    let text = "hydra:\n  launcher:\n    n_jobs: 1\na: 1\nb: 2\nbase: &b {x: 1, y: 2}\nd:\n  <<: *b\n  p: 1\n  q: 2\n  y: 3\nc: 3\n";
    let r = load_config_str(text, Path::new("t.yaml")).unwrap().resolve(&Default::default()).unwrap();
    let keys = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_mapping().unwrap().keys().map(|k| k.as_str().unwrap().to_string()).collect()
    };
    assert_eq!(keys(&r.app), ["a", "b", "base", "d", "c"]);
    assert_eq!(keys(&r.app["d"]), ["x", "y", "p", "q"], "merged first, then its own, in order");
    assert_eq!(r.app["d"]["y"], serde_yaml::Value::from(3), "its own value wins");
    assert_eq!(keys(&r.hydra_doc), ["hydra"], "the hydra node alone");
    assert_eq!(r.hydra_doc["hydra"]["launcher"]["n_jobs"], serde_yaml::Value::from(1));
}
