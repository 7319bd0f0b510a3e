//! A job's environment: ours when the run started (made once into C strings every job
//! shares), then, each replacing an inherited value of the same name, loky's thread limits
//! the user did not set, the slot's values, the job's own variables, its marker and the
//! backend's extras.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use orchestrator_config::SlotValue;
use orchestrator_worker::env as contract;

use super::sys;
use crate::job::JobSpec;

/// The environment every job of a run starts from.
pub(super) struct BaseEnv {
    /// Our environment when the run started, as `NAME=value` C strings.
    entries: Arc<[CString]>,
    /// Indices in `entries` of each name in it (an environment can hold a name twice, and
    /// `getenv` would see the first).
    index: HashMap<OsString, Vec<usize>>,
    /// `PATH` in it, for looking up programs.
    pub(super) path: Option<OsString>,
    /// The thread-count variables to add to every job (those not in `entries`).
    thread: Vec<(OsString, OsString)>,
}

impl BaseEnv {
    /// `base` (our environment), with loky's limit `thread_limit` for the thread variables it
    /// does not set.
    pub(super) fn new(base: &[(OsString, OsString)], thread_limit: Option<usize>) -> BaseEnv {
        let (entries, index) = shared_env(base);
        BaseEnv { entries, index, path: path_var(base), thread: thread_env(thread_limit, base) }
    }

    /// Job `spec`'s environment in `slot`.
    pub(super) fn for_job(
        &self,
        spec: &JobSpec,
        slot: usize,
        slot_env: &[(String, SlotValue)],
        marker: &OsStr,
        extra: Vec<(OsString, OsString)>,
    ) -> io::Result<sys::Env> {
        job_env(spec, slot, slot_env, self, marker, extra)
    }
}

/// Thread-count variables that numeric libraries read; set per job as joblib's loky does.
pub const THREAD_VARS: &[&str] = &[
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
];

/// loky's thread limits, for the variables the user did not set.
fn thread_env(limit: Option<usize>, base_env: &[(OsString, OsString)]) -> Vec<(OsString, OsString)> {
    let Some(n) = limit else { return Vec::new() };
    THREAD_VARS
        .iter()
        .filter(|var| !base_env.iter().any(|(k, _)| k == *var))
        .map(|var| (OsString::from(var), OsString::from(n.to_string())))
        .collect()
}

/// The first `PATH` in `env`, as `getenv` would find it.
fn path_var(env: &[(OsString, OsString)]) -> Option<OsString> {
    env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone())
}

/// `base` as `NAME=value` C strings, and the index of each name among them.
fn shared_env(base: &[(OsString, OsString)]) -> (Arc<[CString]>, HashMap<OsString, Vec<usize>>) {
    let mut entries = Vec::with_capacity(base.len());
    let mut index: HashMap<OsString, Vec<usize>> = HashMap::with_capacity(base.len());
    for (k, v) in base {
        // Our own environment cannot hold a NUL byte; skip rather than trust that.
        if let Ok(c) = CString::new(env_entry(k, v)) {
            index.entry(k.clone()).or_default().push(entries.len());
            entries.push(c);
        }
    }
    (entries.into(), index)
}

/// The job's environment: ours, then (each replacing an inherited value of the same name)
/// loky's thread limits the user did not set, the slot's values, the job's own variables,
/// its marker and `extra`.
fn job_env(
    spec: &JobSpec,
    slot: usize,
    slot_env: &[(String, SlotValue)],
    base: &BaseEnv,
    marker: &OsStr,
    extra: Vec<(OsString, OsString)>,
) -> io::Result<sys::Env> {
    use std::borrow::Cow;
    // Borrowed where possible: this runs for every job, between a slot freeing and the next
    // job's clone.
    let mut overlay: Vec<(&OsStr, Cow<'_, OsStr>)> = Vec::with_capacity(base.thread.len() + spec.env.len() + 4);
    for (var, value) in &base.thread {
        if !spec.env.iter().any(|(k, _)| k == var) {
            overlay.push((var, Cow::Borrowed(value)));
        }
    }
    overlay.push((OsStr::new(contract::SLOT), Cow::Owned(slot.to_string().into())));
    for (name, value) in slot_env {
        overlay.push((OsStr::new(name), Cow::Owned(value.for_slot(slot).into())));
    }
    // A name with `=` (or none) would set another variable than the one asked for.
    if let Some((bad, _)) = spec.env.iter().find(|(k, _)| k.is_empty() || k.as_bytes().contains(&b'=')) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("environment variable name `{}` is empty or contains `=`", bad.to_string_lossy()),
        ));
    }
    overlay.extend(spec.env.iter().map(|(k, v)| (k.as_os_str(), Cow::Borrowed(v.as_os_str()))));
    if let Some((k, v)) = marker.to_str().and_then(|m| m.split_once('=')) {
        overlay.push((OsStr::new(k), Cow::Borrowed(OsStr::new(v))));
    }
    for (k, v) in &extra {
        overlay.push((k, Cow::Borrowed(v)));
    }
    let replaced: Vec<usize> = overlay.iter().filter_map(|(k, _)| base.index.get(*k)).flatten().copied().collect();
    let mut own = Vec::with_capacity(overlay.len());
    // Later overlay entries win: emit only the last value of each name.
    for (i, (k, v)) in overlay.iter().enumerate() {
        if !overlay[i + 1..].iter().any(|(k2, _)| k2 == k) {
            own.push(sys::cstring(env_entry(k, v))?);
        }
    }
    Ok(sys::Env::new(base.entries.clone(), replaced, own))
}

fn env_entry(name: &OsStr, value: &OsStr) -> Vec<u8> {
    // Room for the `=` and the C string's NUL.
    let mut e = Vec::with_capacity(name.len() + value.len() + 2);
    e.extend_from_slice(name.as_bytes());
    e.push(b'=');
    e.extend_from_slice(value.as_bytes());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(vars: &[(&str, &str)], thread_limit: Option<usize>) -> BaseEnv {
        let vars: Vec<(OsString, OsString)> =
            vars.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect();
        BaseEnv::new(&vars, thread_limit)
    }

    #[test]
    fn job_env_layers_in_order_and_respects_user_thread_settings() {
        let slot_env = vec![("GPU".to_string(), SlotValue::PerSlot(vec!["4".into(), "5".into()]))];
        // An environment can hold a name twice: both copies give way to the slot's value.
        let base = base(&[("PATH", "/bin"), ("GPU", "older"), ("OMP_NUM_THREADS", "8"), ("GPU", "old")], Some(3));
        let mut spec = JobSpec::new(0, "x", vec![], "l");
        spec.env = vec![("MKL_NUM_THREADS".into(), "1".into()), ("A".into(), "1".into()), ("A".into(), "2".into())];
        let extra = vec![("ORCHESTRATOR_ARGS".into(), "{}".into())];
        let env = base.for_job(&spec, 1, &slot_env, OsStr::new("ORCHESTRATOR_JOB_KEY=k.0"), extra).unwrap();
        let env: Vec<String> = env.entries().map(|e| e.to_str().unwrap().to_owned()).collect();
        let get = |k: &str| env.iter().filter(|e| e.starts_with(&format!("{k}="))).cloned().collect::<Vec<_>>();
        assert_eq!(get("PATH"), ["PATH=/bin"]);
        assert_eq!(get("OMP_NUM_THREADS"), ["OMP_NUM_THREADS=8"], "inherited setting wins");
        assert_eq!(get("MKL_NUM_THREADS"), ["MKL_NUM_THREADS=1"], "job setting wins");
        assert_eq!(get("OPENBLAS_NUM_THREADS"), ["OPENBLAS_NUM_THREADS=3"]);
        assert_eq!(get("GPU"), ["GPU=5"], "slot value replaces the inherited one");
        assert_eq!(get("A"), ["A=2"], "the last value of a name wins");
        assert_eq!(get("ORCHESTRATOR_SLOT"), ["ORCHESTRATOR_SLOT=1"]);
        assert_eq!(get("ORCHESTRATOR_JOB_KEY"), ["ORCHESTRATOR_JOB_KEY=k.0"]);
        assert_eq!(get("ORCHESTRATOR_ARGS"), ["ORCHESTRATOR_ARGS={}"]);
    }

    #[test]
    fn an_environment_name_with_an_equals_sign_is_refused() {
        let base = base(&[("PATH", "/bin")], None);
        for name in ["A=B", ""] {
            let mut spec = JobSpec::new(0, "x", vec![], "l");
            spec.env = vec![(name.into(), "x".into())];
            let e = base.for_job(&spec, 0, &[], OsStr::new("K=k.0"), Vec::new()).err().expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains("is empty or contains `=`"), "{e}");
        }
    }
}
