//! Any UTF-8 string: parsing an override, planning it and taking its first job must
//! never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orchestrator_config::compose::apply_overrides;
use orchestrator_config::grammar::parse_override;
use orchestrator_config::sweep::{SweepContext, SweepPlan};

fuzz_target!(|input: &str| {
    let Ok(o) = parse_override(input) else {
        return;
    };
    // glob() walks the filesystem; an absolute `/**` would make the fuzzer crawl the
    // machine rather than the parser.
    if input.contains("glob") {
        return;
    }
    let ctx = SweepContext {
        config_dir: None,
        cwd: std::env::temp_dir(),
        seed: Some(0),
    };
    let Ok(plan) = SweepPlan::new(vec![o], &ctx) else {
        return;
    };
    if let Some(job) = plan.job(0) {
        let _ = job.display();
        let mut config = serde_yaml::Value::Null;
        let _ = apply_overrides(&mut config, &job.items);
    }
    let _ = plan.job(plan.len().saturating_sub(1));
});
