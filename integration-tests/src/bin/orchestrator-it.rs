//! The orchestrator binary as built for the integration tests: the same library entry
//! point as `crates/orchestrator-cli/src/main.rs`, so `CARGO_BIN_EXE_orchestrator-it` is
//! available to the tests without a nested cargo build.

fn main() -> std::process::ExitCode {
    orchestrator_cli::main()
}
