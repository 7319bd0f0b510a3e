//! A job's named payloads, handed over as files: the shared spill (one file per distinct
//! content) for those bigger than `max_nbytes`, a file of the job's own otherwise; listed for
//! the job in `ORCHESTRATOR_ARGS`.

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::Ctx;
use crate::job::JobSpec;

/// Payload files handed to one job, released when it ends.
#[derive(Default)]
pub(super) struct Placed {
    pub(super) json: Option<String>,
    shared: Vec<String>,
    own: Vec<PathBuf>,
}

impl Placed {
    pub(super) fn release(self, ctx: &Ctx) {
        if let Some(Ok(store)) = ctx.spill.get() {
            for h in &self.shared {
                store.release(h);
            }
        }
        for f in &self.own {
            let _ = std::fs::remove_file(f);
        }
    }
}

pub(super) fn place_payloads(spec: &JobSpec, ctx: &Ctx) -> Result<Placed, crate::spill::SpillError> {
    use crate::spill::{SpillError, SpillStore};
    if spec.payloads.is_empty() {
        return Ok(Placed::default());
    }
    let mut names = HashSet::new();
    if let Some(p) = spec.payloads.iter().find(|p| !names.insert(p.name.as_str())) {
        return Err(SpillError::DuplicateName(p.name.clone()));
    }
    let store = ctx.spill.get_or_init(|| match &ctx.opts.spill {
        Some(s) => Ok(s.clone()),
        None => {
            let here = std::env::current_dir().unwrap_or_default();
            let folder = crate::temp::resolve_temp_folder(ctx.opts.temp_folder.as_deref(), &here);
            SpillStore::create(&folder.path, ctx.opts.mmap_mode).map(Arc::new).map_err(|e| e.to_string())
        }
    });
    let store = store
        .as_ref()
        .map_err(|e| SpillError::Io { path: PathBuf::from("temp_folder"), source: io::Error::other(e.clone()) })?;
    // Own copies are numbered: two payloads of one name, or two jobs given the
    // same number, must not share a file.
    static OWN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mode = crate::spill::mode_name(ctx.opts.mmap_mode);
    let mut placed = Placed::default();
    let mut json = serde_json::Map::new();
    let mut place = |p: &crate::job::Payload, placed: &mut Placed| -> Result<(), SpillError> {
        let size = p.bytes.len() as u64;
        let (path, shared) = if ctx.opts.max_nbytes.is_some_and(|m| size > m) {
            let s = store.put_bytes(&p.bytes, false)?;
            placed.shared.push(s.hash);
            (s.path, true)
        } else {
            // Not shared: the job's own copy, next to the shared ones, gone when it ends.
            let seq = OWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = crate::spill::sanitize(&p.name);
            let path = store.dir().join(format!("job-{}-{}-{seq}-{name}", ctx.run_key, spec.num));
            std::fs::write(&path, &p.bytes).map_err(|source| SpillError::Io { path: path.clone(), source })?;
            placed.own.push(path.clone());
            (path, false)
        };
        let info = crate::spill::ArgInfo { path, mode, size, shared };
        json.insert(p.name.clone(), serde_json::to_value(&info).unwrap_or_default());
        Ok(())
    };
    for p in &spec.payloads {
        if let Err(e) = place(p, &mut placed) {
            // What was placed before the failure is handed back now, not at the sweep's end.
            placed.release(ctx);
            return Err(e);
        }
    }
    placed.json = Some(serde_json::Value::Object(json).to_string());
    Ok(placed)
}
