//! What the log and the record say when a job's program did not run: which limit an
//! `execve` went over, which directory was missing.

use std::ffi::OsStr;
use std::io;

use crate::job::JobSpec;

/// The log's note for a job whose program never ran: our spawn failed, or the child's set-up
/// or exec did.
pub(super) fn not_started_note(spec: &JobSpec, error: &str) -> String {
    format!("could not start {}: {error}", spec.program.to_string_lossy())
}

pub(super) fn spawn_error(spec: &JobSpec, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::E2BIG) => format!("{e}: {}", too_big(spec)),
        Some(libc::ENOENT) if spec.cwd.as_ref().is_some_and(|d| !d.is_dir()) => {
            format!(
                "working directory {} does not exist",
                spec.cwd.as_ref().map(|d| d.display().to_string()).unwrap_or_default()
            )
        }
        _ => e.to_string(),
    }
}

/// Which of Linux's two limits an `execve` that failed with E2BIG went over: 128 KiB for
/// one argument or environment string, or `ARG_MAX` for all of them together.
pub(super) fn too_big(spec: &JobSpec) -> String {
    const ONE: usize = 128 * 1024;
    let head = |s: &OsStr| s.to_string_lossy().chars().take(40).collect::<String>();
    if let Some(a) = spec.args.iter().find(|a| a.len() >= ONE) {
        return format!("argument `{}...` is {} bytes, over the 128 KiB one argument may hold", head(a), a.len());
    }
    if let Some((k, v)) = spec.env.iter().find(|(k, v)| k.len() + v.len() + 1 >= ONE) {
        return format!(
            "environment variable {} is {} bytes, over the 128 KiB one may hold",
            k.to_string_lossy(),
            k.len() + v.len() + 1
        );
    }
    let strings = |it: &mut dyn Iterator<Item = usize>| it.map(|n| n + 1 + std::mem::size_of::<usize>()).sum::<usize>();
    let argv = strings(&mut spec.args.iter().map(|a| a.len()));
    let env = strings(&mut std::env::vars_os().chain(spec.env.iter().cloned()).map(|(k, v)| k.len() + v.len() + 1));
    let limit = nix::unistd::sysconf(nix::unistd::SysconfVar::ARG_MAX).ok().flatten().unwrap_or(0);
    format!(
        "the arguments ({argv} bytes) and the environment (about {env} bytes) are over what a program may get in all (ARG_MAX, {limit} bytes here); pass big values as files (`key=@path`, or a lower max_nbytes)"
    )
}

pub(super) fn argv_text(spec: &JobSpec) -> String {
    let mut s = spec.program.to_string_lossy().into_owned();
    for a in &spec.args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}
