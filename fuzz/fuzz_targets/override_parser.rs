//! Any UTF-8 string: parsing an override, planning it and taking its first job must
//! never panic. The corpus is replayed by `crates/orchestrator-config/tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| orchestrator_config::fuzzing::override_parser(input));
