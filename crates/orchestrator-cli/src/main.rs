//! `orchestrator`: run a parameter sweep as supervised parallel processes.

fn main() -> std::process::ExitCode {
    orchestrator_cli::main()
}
