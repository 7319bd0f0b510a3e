//! `orchestrator resume DIR`: run again the jobs of a sweep that have no successful record,
//! with nothing but its dir: the config and the app come from the record the sweep wrote
//! when it started. Given again, they are checked against it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use orchestrator_hydra::SweepRecord;
use orchestrator_hydra::record::RECORD_FILE;
use orchestrator_hydra::sweep::ConfigInput;

use crate::cli::{ResumeArgs, RunArgs};
use crate::exit;

pub fn main(args: ResumeArgs) -> u8 {
    match prepare(&args) {
        Ok((run_args, config)) => crate::run::main_with(run_args, Some(config)),
        Err(e) => {
            eprintln!("error: {}", orchestrator_config::escape_controls(&e));
            exit::USAGE
        }
    }
}

fn prepare(args: &ResumeArgs) -> Result<(RunArgs, ConfigInput), String> {
    let here = std::env::current_dir().map_err(|e| format!("cannot read the current directory: {e}"))?;
    let dir = here.join(&args.dir);
    let record = match SweepRecord::read(&dir) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(format!(
                "{} has no {RECORD_FILE}: it is not a sweep dir, or its sweep was started by an earlier version\n  = help: orchestrator run --resume {} -c <config> -- <app> resumes it with the config and app given again",
                args.dir.display(),
                args.dir.display()
            ));
        }
        Err(e) => return Err(format!("cannot read {}: {e}", dir.join(RECORD_FILE).display())),
    };
    let config = match (&args.config, &record.config) {
        (Some(path), Some(recorded)) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if text != recorded.text {
                return Err(format!(
                    "{} is not the config the sweep was started with ({}, recorded in {RECORD_FILE})\n  = help: leave -c out to resume with the recorded config; change launcher settings with hydra.* overrides",
                    path.display(),
                    recorded.path.display()
                ));
            }
            ConfigInput::File(here.join(path))
        }
        (Some(path), None) => {
            return Err(format!(
                "the sweep was started without a config, not with {}\n  = help: leave -c out",
                path.display()
            ));
        }
        (None, Some(recorded)) => ConfigInput::Text { text: recorded.text.clone(), name: recorded.path.clone() },
        (None, None) => ConfigInput::Defaults,
    };
    let recorded_app: Vec<OsString> = record.app.iter().map(OsString::from).collect();
    if !args.app.is_empty() && args.app != recorded_app {
        return Err(format!(
            "the app `{}` is not the one the sweep was started with: `{}`\n  = help: leave the app out to resume with the recorded one",
            args.app.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
            record.app.join(" ")
        ));
    }
    // Relative paths of the sweep (the app, `@file` values) are from where it was started.
    std::env::set_current_dir(&record.base_dir).map_err(|e| {
        format!(
            "cannot go to {}, the directory the sweep was started in: {e}\n  = help: the sweep's relative paths are taken from there",
            record.base_dir.display()
        )
    })?;
    let run_args = RunArgs {
        config: None,
        multirun: true,
        resume: Some(absolute(&dir)),
        quiet: args.quiet,
        verbose: args.verbose,
        no_progress: args.no_progress,
        json: args.json,
        dry_run: false,
        backend: None,
        warm: false,
        detach: false,
        overrides: args.overrides.clone(),
        app: recorded_app,
    };
    Ok((run_args, config))
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}
