//! Reads argument `data` (inline, or a file mapped with the sweep's `mmap_mode`) and prints
//! its size and a checksum. Run it under orchestrator with `data=@some/file`:
//!
//! `orchestrator run -m data=@big.bin x=1..4 -- target/release/sum_arg`

use orchestrator_worker::{JobContext, open_arg};

fn main() {
    let key = std::env::var("SUM_ARG_KEY").unwrap_or_else(|_| "data".into());
    let bytes = match open_arg(&key) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("sum_arg: {e}");
            std::process::exit(2);
        }
    };
    // Touch every page: the point is to read the value fully.
    let sum = bytes.chunks(1 << 16).fold(0u64, |acc, c| c.iter().fold(acc, |a, b| a.wrapping_add(u64::from(*b))));
    let job = JobContext::from_env().num.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    println!("job {job}: {} bytes, sum {sum}", bytes.len());
}
