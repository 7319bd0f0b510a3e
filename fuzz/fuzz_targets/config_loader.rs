//! Any UTF-8 text as a seed config: loading it must return a value or an error, never
//! panic. The corpus is replayed by `crates/orchestrator-config/tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| orchestrator_config::fuzzing::config_loader(text));
