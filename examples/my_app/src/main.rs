//! The seed's example app in Rust: logs its pid and task like Hydra's `my_app.py`, then
//! sleeps one second. Overrides arrive as `key=value` arguments (`task=3`).

use std::time::Duration;

use orchestrator_worker::overrides_from_args;

fn main() {
    let overrides = overrides_from_args(std::env::args().skip(1));
    let task = overrides.iter().rev().find(|(k, _)| k == "task").map(|(_, v)| v.as_str()).unwrap_or("1");
    println!("[{}][__main__][INFO] - Process ID {} executing task {task} ...", now_hydra(), std::process::id());
    std::thread::sleep(Duration::from_secs(1));
}

/// Hydra's asctime (`2026-11-24 14:03:16,726`) in UTC, without a date crate.
fn now_hydra() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{day:02} {:02}:{:02}:{:02},{:03}", rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_millis())
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
