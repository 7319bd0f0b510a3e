//! Which jobs a warm interpreter can run: `python [flags] script.py args...` or
//! `python [flags] -m module args...`, told from the job's argv alone (pure, tested here).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// What the job runs in the interpreter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    /// A script, as written (relative to the job's cwd).
    Path(OsString),
    /// A module (`-m`).
    Module(String),
}

/// A job's command line as a Python invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PyCommand {
    /// Interpreter flags before the script or `-m` (`-u`, `-O`, `-X dev`, `-W error`, ...),
    /// each as written; the zygote is started with them.
    pub(crate) flags: Vec<OsString>,
    /// The script or module.
    pub(crate) target: Target,
    /// The job's `sys.argv[1:]`.
    pub(crate) args: Vec<OsString>,
}

/// Whether `program` names a CPython interpreter: `python`, `python3`, `python3.11`, as a
/// bare name or a path.
pub(crate) fn is_python(program: &OsStr) -> bool {
    let name = program.as_bytes().rsplit(|b| *b == b'/').next().unwrap_or_default();
    let Some(version) = name.strip_prefix(b"python") else { return false };
    version.iter().all(|b| b.is_ascii_digit() || *b == b'.') && !version.starts_with(b".")
}

/// Flags that change nothing a fork would get wrong (they are the zygote's too).
const PLAIN_FLAGS: &[u8] = b"bBdEOqsSuvR";

/// `args` (after the interpreter) as a warm-runnable command, or why not.
pub(crate) fn parse(args: &[OsString]) -> Result<PyCommand, String> {
    let mut flags = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_bytes();
        match a {
            b"-m" => {
                let module = args.get(i + 1).ok_or("`-m` without a module")?;
                let module = module.to_str().filter(|m| !m.is_empty()).ok_or("a module name that is not UTF-8")?;
                return Ok(PyCommand {
                    flags,
                    target: Target::Module(module.to_owned()),
                    args: args[i + 2..].to_vec(),
                });
            }
            b"-X" | b"-W" | b"--check-hash-based-pycs" => {
                let value =
                    args.get(i + 1).ok_or_else(|| format!("`{}` without a value", args[i].to_string_lossy()))?;
                flags.push(args[i].clone());
                flags.push(value.clone());
                i += 2;
            }
            [b'-', b'X' | b'W', ..] => {
                flags.push(args[i].clone());
                i += 1;
            }
            b"-" | b"--" => return Err("a program read from stdin".into()),
            [b'-', b'-', ..] => return Err(format!("interpreter option `{}`", args[i].to_string_lossy())),
            [b'-', letters @ ..] => {
                if let Some(bad) = letters.iter().find(|l| !PLAIN_FLAGS.contains(l)) {
                    let why = match bad {
                        b'c' => "a command (`-c`)".to_owned(),
                        b'i' => "interactive mode (`-i`)".to_owned(),
                        b'I' => "isolated mode (`-I`)".to_owned(),
                        b'm' => "`-m` combined with other flags".to_owned(),
                        _ => format!("interpreter option `{}`", args[i].to_string_lossy()),
                    };
                    return Err(why);
                }
                flags.push(args[i].clone());
                i += 1;
            }
            _ => {
                return Ok(PyCommand { flags, target: Target::Path(args[i].clone()), args: args[i + 1..].to_vec() });
            }
        }
    }
    Err("no script or module".into())
}

/// Environment variables a Python process reads only as it starts (so a job whose value
/// differs from the zygote's must start fresh): the interpreter's own (`PYTHON*`: hash
/// seed, path, buffering, ...), the dynamic loader's and the locale (stdio's encoding).
pub(crate) fn read_at_startup(name: &OsStr) -> bool {
    let n = name.as_bytes();
    n.starts_with(b"PYTHON") || n.starts_with(b"LD_") || matches!(n, b"LC_ALL" | b"LC_CTYPE" | b"LANG")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn interpreters_are_told_by_name() {
        for yes in ["python", "python3", "python3.11", "/usr/bin/python3", "./venv/bin/python"] {
            assert!(is_python(OsStr::new(yes)), "{yes}");
        }
        for no in ["pythonw", "ipython", "python3-config", "bash", "/usr/bin/python.sh", "python.3"] {
            assert!(!is_python(OsStr::new(no)), "{no}");
        }
    }

    #[test]
    fn scripts_and_modules_with_their_flags() {
        assert_eq!(
            parse(&os(&["-u", "-X", "dev", "-Wignore", "app.py", "task=1", "-m"])).unwrap(),
            PyCommand {
                flags: os(&["-u", "-X", "dev", "-Wignore"]),
                target: Target::Path("app.py".into()),
                args: os(&["task=1", "-m"]),
            }
        );
        assert_eq!(
            parse(&os(&["-OO", "-m", "pkg.mod", "a", "b"])).unwrap(),
            PyCommand { flags: os(&["-OO"]), target: Target::Module("pkg.mod".into()), args: os(&["a", "b"]) }
        );
    }

    #[test]
    fn what_a_fork_cannot_run_is_refused_with_a_reason() {
        for (args, why) in [
            (&["-c", "print(1)"][..], "-c"),
            (&["-i", "app.py"], "-i"),
            (&["-I", "app.py"], "-I"),
            (&["-um", "mod"], "-m"),
            (&["-"], "stdin"),
            (&["--version"], "--version"),
            (&["-m"], "-m"),
            (&["-u"], "no script"),
        ] {
            let err = parse(&os(args)).unwrap_err();
            assert!(err.contains(why), "{args:?}: {err}");
        }
    }

    #[test]
    fn start_up_variables() {
        for yes in ["PYTHONHASHSEED", "PYTHONPATH", "PYTHONUNBUFFERED", "LD_PRELOAD", "LC_ALL", "LANG"] {
            assert!(read_at_startup(OsStr::new(yes)), "{yes}");
        }
        for no in ["OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "ORCHESTRATOR_JOB_NUM", "HOME"] {
            assert!(!read_at_startup(OsStr::new(no)), "{no}");
        }
    }
}
