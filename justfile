# Shortcuts only: every recipe is a plain cargo command from the README.

# Run the seed sweep with the Rust example app.
example:
    cargo build --release -p my_app
    cargo run --release -- run --config config/joblib.yaml --multirun task=1..5 -- target/release/my_app

# All tests, as CI runs them.
test:
    cargo test --workspace

# Lint as CI does.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# The spawn benchmark against xargs, GNU parallel and a posix_spawn floor.
bench:
    bash bench/spawn.sh

# The seed's app under Hydra's joblib launcher and under orchestrator.
bench-hydra:
    bash bench/hydra.sh

# One large argument shared by many jobs, against a dd+xargs floor and joblib.
bench-spill:
    bash bench/spill.sh

# Capture throughput: jobs that flood stdout, against xargs and GNU parallel writing files.
bench-flood:
    bash bench/flood.sh

# Supervisor memory on 1,000 to 100,000-job sweeps.
bench-scale:
    bash bench/scale.sh

# Ctrl-C in the middle of a sweep: time to exit and processes left, against xargs, GNU parallel and Hydra.
bench-interrupt:
    bash bench/interrupt.sh
