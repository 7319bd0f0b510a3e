//! Any UTF-8 text as a seed config: loading it must return a value or an error, never
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = orchestrator_config::load_config_str(text, std::path::Path::new("fuzz.yaml"));
});
