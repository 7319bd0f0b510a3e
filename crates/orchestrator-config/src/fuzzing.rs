//! What the fuzz targets (`fuzz/`) run, here so that their corpora (`fuzz/corpus/`) are
//! replayed as ordinary tests on stable (`tests/fuzz_corpus.rs`) with exactly the same code.
//! Not API.

use std::path::Path;

use crate::compose::apply_overrides;
use crate::grammar::parse_override;
use crate::sweep::{SweepContext, SweepPlan};

/// Any text as a seed config: loading it returns a value or an error, never panics.
pub fn config_loader(text: &str) {
    let _ = crate::load_config_str(text, Path::new("fuzz.yaml"));
}

/// Any string as an override: parsing it, planning it and taking its first and last jobs
/// never panics.
pub fn override_parser(input: &str) {
    let Ok(o) = parse_override(input) else {
        return;
    };
    // glob() walks the filesystem; an absolute `/**` would make the fuzzer crawl the
    // machine rather than the parser.
    if input.contains("glob") {
        return;
    }
    let ctx = SweepContext { config_dir: None, cwd: std::env::temp_dir(), seed: Some(0) };
    let Ok(plan) = SweepPlan::new(vec![o], &ctx) else {
        return;
    };
    if let Some(job) = plan.job(0) {
        let _ = job.display();
        let mut config = serde_yaml::Value::Null;
        let _ = apply_overrides(&mut config, &job.items);
    }
    let _ = plan.job(plan.len().saturating_sub(1));
}
