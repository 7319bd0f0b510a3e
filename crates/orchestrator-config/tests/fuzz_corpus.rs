//! The fuzz targets' corpora (`fuzz/corpus/<target>/`), replayed on stable as ordinary tests:
//! every input the fuzzers kept (and the seeds: the configs and overrides of the tests and the
//! Hydra differential, nesting 100,000 deep) goes through the targets' code once more.

use std::path::Path;

fn replay(target: &str, run: fn(&str)) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        // libFuzzer hands a `&str` target only valid UTF-8.
        if let Ok(text) = std::str::from_utf8(&bytes) {
            run(text);
            n += 1;
        }
    }
    n
}

#[test]
fn the_config_loader_corpus_replays_without_a_panic() {
    let n = replay("config_loader", orchestrator_config::fuzzing::config_loader);
    assert!(n >= 10, "only {n} inputs in fuzz/corpus/config_loader");
}

#[test]
fn the_override_parser_corpus_replays_without_a_panic() {
    let n = replay("override_parser", orchestrator_config::fuzzing::override_parser);
    assert!(n >= 100, "only {n} inputs in fuzz/corpus/override_parser");
}
