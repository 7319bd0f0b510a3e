"""Find the `orchestrator` binary installed with this package (as uv's `find_uv_bin`)."""
import os
import shutil
import sys
import sysconfig
from fnmatch import fnmatch
from typing import List, Optional

ENV_VAR = "ORCHESTRATOR_BIN"


class OrchestratorNotFound(FileNotFoundError):
    pass


def find_orchestrator_bin() -> str:
    """The path of the `orchestrator` binary: `$ORCHESTRATOR_BIN` if set; else the scripts
    dir of this Python (where pip puts the wheel's binary), of its base prefix, of a
    `--prefix` or `--target` install this package sits in, of the user scheme; else `PATH`."""
    override = os.environ.get(ENV_VAR)
    if override:
        if os.path.isfile(override) and os.access(override, os.X_OK):
            return override
        raise OrchestratorNotFound(
            f"{ENV_VAR}={override} is not an executable file"
        )
    exe = "orchestrator" + (sysconfig.get_config_var("EXE") or "")
    here = os.path.dirname(os.path.abspath(__file__))
    targets: List[Optional[str]] = [
        sysconfig.get_path("scripts"),
        sysconfig.get_path("scripts", vars={"base": sys.base_prefix}),
        # <prefix>/lib/python3.X/site-packages/hydra_plugins/orchestrator_launcher
        _join(
            _strip(here, "lib/python*/site-packages/hydra_plugins/orchestrator_launcher"),
            "bin",
        ),
        # pip install --target <dir>: <dir>/hydra_plugins/orchestrator_launcher
        _join(_strip(here, "hydra_plugins/orchestrator_launcher"), "bin"),
        _user_scripts(),
    ]
    seen: List[str] = []
    for t in targets:
        if not t or t in seen:
            continue
        seen.append(t)
        path = os.path.join(t, exe)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    on_path = shutil.which(exe)
    if on_path:
        return on_path
    where = "\n".join(f" - {t}" for t in seen + ["PATH"])
    raise OrchestratorNotFound(
        f"cannot find the orchestrator binary; looked in:\n{where}\n"
        f"Install this package with pip (the wheel carries the binary), or set {ENV_VAR} "
        "to its path (e.g. target/release/orchestrator after `cargo build --release`)."
    )


def _strip(path: str, suffix: str) -> Optional[str]:
    """`path` without its last components if they match `suffix` (`*` wildcards)."""
    parts = path.split(os.sep)
    want = suffix.split("/")
    if len(parts) < len(want):
        return None
    if not all(fnmatch(p, w) for p, w in zip(reversed(parts), reversed(want))):
        return None
    return os.sep.join(parts[: -len(want)]) or os.sep


def _join(path: Optional[str], *rest: str) -> Optional[str]:
    return os.path.join(path, *rest) if path else None


def _user_scripts() -> Optional[str]:
    try:
        if sys.version_info >= (3, 10):
            scheme = sysconfig.get_preferred_scheme("user")
        elif sys.platform == "darwin" and getattr(sys, "_framework", None):
            scheme = "osx_framework_user"
        else:
            scheme = "posix_user"
        return sysconfig.get_path("scripts", scheme=scheme)
    except Exception:  # a Python without a user scheme
        return None
