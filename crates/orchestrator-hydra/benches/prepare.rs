//! What the supervisor spends per job before starting it: composing its config, rendering
//! its three YAML files (the job's own process writes them) and creating its directory
//! (`cargo bench -p orchestrator-hydra --bench prepare`).
//!
//! The directories go under `$TMPDIR`; run it on the filesystem the sweeps use.

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use orchestrator_hydra::sweep::{ConfigInput, PreparedSweep, SweepRequest};

fn seed_sweep(base: PathBuf) -> PreparedSweep {
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/joblib.yaml");
    let req = SweepRequest::new(
        ConfigInput::File(seed.into()),
        vec!["task=1..10000000".into()],
        vec!["/bin/true".into()],
        base,
    );
    PreparedSweep::prepare(&req).expect("the seed config and a range sweep are valid")
}

fn prepare(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let mut prepared = seed_sweep(tmp.path().to_path_buf());
    prepared.layout.create().expect("the sweep dir");
    let mut next = 0;
    c.bench_function("prepare one job (compose, render 3 YAML files, 1 dir)", |b| {
        b.iter(|| {
            let job = prepared.plan.job(next).expect("the plan has 10M jobs");
            next += 1;
            let spec = prepared.layout.prepare(&job);
            assert!(spec.setup_error.is_none(), "{:?}", spec.setup_error);
            spec
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = prepare
}
criterion_main!(benches);
