"""What `OrchestratorLauncher.launch` does (imported only when a sweep runs).

Per batch: compose each job's sweep config as Hydra does (`load_sweep_config`, then
`hydra.job.id` / `hydra.job.num`), cloudpickle it with what every job shares (hydra_context,
task_function, Singleton state) into a private dir, write a manifest, and run
`orchestrator launch --manifest <file>`. The binary starts one worker process per job
(`python -m hydra_plugins.orchestrator_launcher._worker <job> <result>`, with this
interpreter, cwd and sys.path), `n_jobs` at a time, and streams JSON events: the jobs'
output lines are echoed here as they come. Then one JobReturn per job, in order: the
worker's, or a FAILED one saying why the job left none (signal, timeout, spawn failure,
interrupted).
"""
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    setup_globals,
)
from omegaconf import DictConfig, ListConfig, OmegaConf

from ._errors import OrchestratorJobError
from ._find_bin import find_orchestrator_bin
from ._worker import compose_job

log = logging.getLogger(__name__)

WORKER_MODULE = "hydra_plugins.orchestrator_launcher._worker"

# The warm interpreter's warm-up: imports Hydra and unpickles what every job shares (so the
# task function's modules are imported), never running a task.
WARM_UP = "hydra_plugins.orchestrator_launcher._worker:warm_up"


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def launcher_options(params: Dict[str, Any]) -> Dict[str, Any]:
    """The launcher's config as the manifest's `launcher` object."""
    params = {k: _plain(v) for k, v in params.items() if k != "_target_"}
    slurm = params.pop("slurm", None) or {}
    if params.get("backend") == "slurm":
        # Not joblib's: orchestrator's own backend, with its settings. Jobs start on the
        # nodes as fresh processes.
        params["backend"] = None
        params["orchestrator"] = {"backend": "slurm", "slurm": slurm}
        params["warm"] = False
    elif slurm:
        raise ValueError("hydra.launcher.slurm is set but hydra.launcher.backend is not slurm")
    if params.get("warm") and sys.platform.startswith("linux"):
        params["preload"] = [WARM_UP] + list(params.get("preload") or [])
    else:
        # Forking a warm interpreter is Linux only (macOS: fork without exec is unsafe).
        params["warm"] = False
        params.pop("preload", None)
        params.pop("fast_exit", None)
    # Unset: the binary's defaults (1 s doubling; failed, timed out, signaled; no memory limit;
    # no admission limit).
    for key in ("retry_delay", "retry_on", "mem_gb", "min_free_memory", "max_load", "start_delay"):
        if params.get(key) is None:
            params.pop(key, None)
    # Anything else goes to the binary, which refuses unknown keys with a did-you-mean.
    return params


def _job_dir(sweep_config: DictConfig) -> str:
    """The job's output dir, computed as `run_job` computes it (it evaluates
    `hydra.sweep.subdir` with this job's config as HydraConfig)."""
    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    hydra_config.set_config(sweep_config)
    try:
        out = str(OmegaConf.select(sweep_config, "hydra.sweep.dir"))
        sub = str(OmegaConf.select(sweep_config, "hydra.sweep.subdir"))
        return os.path.abspath(os.path.join(out, sub))
    finally:
        hydra_config.cfg = previous


_INTERPOLATION = re.compile(r"\$\{([^${}]*)\}")


def _dir_without_composing(config: DictConfig) -> bool:
    """Whether every job's dir is `<hydra.sweep.dir>/<num>` and its name the sweep's, as
    they are unless the sweep dir or subdir depend on the job (Hydra's default subdir is
    `${hydra.job.num}`). Then the job's config is composed by the job itself (in parallel,
    as joblib's workers do) instead of here, one after the other (~0.1-0.2 s a job)."""
    raw = OmegaConf.to_container(config.hydra.sweep, resolve=False)
    if not isinstance(raw, dict) or raw.get("subdir") != "${hydra.job.num}":
        return False
    sweep_dir = raw.get("dir")
    if not isinstance(sweep_dir, str):
        return False
    rest = _INTERPOLATION.sub(
        lambda m: "" if m.group(1).startswith("now:") or m.group(1) == "hydra.job.name" else "${",
        sweep_dir,
    )
    return "${" not in rest


class _Job:
    def __init__(
        self,
        num: int,
        overrides: Sequence[str],
        name: str,
        job_dir: str,
        sweep_config: Optional[DictConfig],
    ) -> None:
        self.num = num
        self.overrides = list(overrides)
        self.config = sweep_config  # None: composed by the job
        self.name = name
        self.id = f"{name}_{num}"
        self.dir = job_dir
        # Beside Hydra's own `<task>.log`, so that neither overwrites the other.
        self.log = os.path.join(self.dir, f"{self.name}_orchestrator.log")
        self.job_file = ""
        self.result_file = ""


def launch(
    launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> Sequence[JobReturn]:
    setup_globals()
    assert launcher.config is not None
    assert launcher.task_function is not None
    assert launcher.hydra_context is not None
    config: DictConfig = launcher.config
    hydra_context = launcher.hydra_context

    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    options = launcher_options(launcher.params)
    binary = find_orchestrator_bin()
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)

    log.info(
        "Orchestrator({}) is launching {} jobs".format(
            ",".join(f"{k}={v}" for k, v in options.items()), len(job_overrides)
        )
    )
    log.info(f"Launching jobs, sweep output dir : {sweep_dir}")
    for idx, overrides in enumerate(job_overrides):
        log.info("\t#{} : {}".format(idx, " ".join(filter_overrides(overrides))))

    jobs: List[_Job] = []
    compose_here = not _dir_without_composing(config)
    for idx, overrides in enumerate(job_overrides):
        num = initial_job_idx + idx
        if compose_here:
            # The job's dir depends on its config: compose it here to know where its
            # capture log goes, and hand it to the job.
            sweep_config = compose_job(hydra_context, config, overrides, num)
            name = str(sweep_config.hydra.job.name)
            jobs.append(_Job(num, overrides, name, _job_dir(sweep_config), sweep_config))
        else:
            name = str(config.hydra.job.name)
            job_dir = os.path.abspath(os.path.join(str(config.hydra.sweep.dir), str(num)))
            jobs.append(_Job(num, overrides, name, job_dir, None))

    # The jobs read their files from here: on a cluster, a place the nodes share.
    on_slurm = options.get("orchestrator", {}).get("backend") == "slurm"
    private = tempfile.mkdtemp(prefix=".orchestrator-hydra-" if on_slurm else "orchestrator-hydra-", dir=sweep_dir if on_slurm else None)
    try:
        manifest = _write_job_files(private, jobs, launcher, options, sweep_dir)
        finished, stopped_by = _run(binary, manifest, len(jobs))
        returns = [
            _job_return(job, finished.get(job.num), stopped_by, hydra_context, config) for job in jobs
        ]
    finally:
        shutil.rmtree(private, ignore_errors=True)
    failed = sum(1 for r in returns if r.status != JobStatus.COMPLETED)
    if failed:
        log.warning(f"{failed} of {len(returns)} jobs failed; journal: {sweep_dir / 'jobs.jsonl'}")
    if stopped_by is not None:
        _reraise(stopped_by)
    return returns


def _write_job_files(
    private: str, jobs: List[_Job], launcher: Any, options: Dict[str, Any], sweep_dir: Path
) -> str:
    import pickle

    import cloudpickle

    common = os.path.join(private, "common.pkl")
    with open(common, "wb") as f:
        cloudpickle.dump(
            {
                "hydra_context": launcher.hydra_context,
                "task_function": launcher.task_function,
                "master_config": launcher.config,
                "singleton_state": Singleton.get_state(),
            },
            f,
        )
    sys_path = list(sys.path)
    env_base = {
        "PYTHONPATH": os.pathsep.join(sys_path),
        # For the warm interpreter's warm-up (WARM_UP): what to unpickle.
        "ORCHESTRATOR_HYDRA_COMMON": common,
    }
    # Lines reach the console as they are written, not when a buffer fills.
    if "PYTHONUNBUFFERED" not in os.environ:
        env_base["PYTHONUNBUFFERED"] = "1"
    cwd = os.getcwd()
    entries = []
    for job in jobs:
        job.job_file = os.path.join(private, f"job_{job.num}.pkl")
        job.result_file = os.path.join(private, f"result_{job.num}.pkl")
        with open(job.job_file, "wb") as f:
            pickle.dump(
                {
                    "sys_path": sys_path,
                    "common": common,
                    "config": None if job.config is None else cloudpickle.dumps(job.config),
                    "overrides": job.overrides,
                    "num": job.num,
                    "id": job.id,
                    "dir": job.dir,
                },
                f,
            )
        env = dict(env_base)
        env.update(
            {
                "ORCHESTRATOR_JOB_NUM": str(job.num),
                "ORCHESTRATOR_JOB_ID": job.id,
                "ORCHESTRATOR_JOB_NAME": job.name,
                "ORCHESTRATOR_JOB_DIR": job.dir,
                "ORCHESTRATOR_SWEEP_DIR": os.path.abspath(str(sweep_dir)),
            }
        )
        entries.append(
            {
                "num": job.num,
                "id": job.id,
                # This interpreter, never a `python3` found on PATH.
                "argv": [sys.executable, "-m", WORKER_MODULE, job.job_file, job.result_file],
                "env": env,
                "cwd": cwd,
                "dir": job.dir,
                "log": job.log,
                "overrides": job.overrides,
            }
        )
    manifest = os.path.join(private, "manifest.json")
    with open(manifest, "w") as f:
        json.dump(
            {"sweep_dir": os.path.abspath(str(sweep_dir)), "launcher": options, "jobs": entries}, f
        )
    return manifest


class _Reader(threading.Thread):
    """Reads the binary's events: echoes the jobs' lines, keeps each job's record."""

    def __init__(self, stream: Any) -> None:
        super().__init__(name="orchestrator-events", daemon=True)
        self.stream = stream
        self.finished: Dict[int, Dict[str, Any]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        try:
            for raw in self.stream:
                try:
                    ev = json.loads(raw)
                except ValueError:
                    sys.stderr.write(raw.decode(errors="replace"))
                    continue
                kind = ev.get("event")
                if kind == "output":
                    out = sys.stdout if ev.get("stream") == "stdout" else sys.stderr
                    try:
                        out.write(ev.get("line", "") + ("\n" if ev.get("complete", True) else ""))
                        out.flush()
                    except Exception:
                        # A closed console (`| head`) must not stop the reading: the binary
                        # would block on a full pipe. The lines are in the capture logs.
                        pass
                elif kind == "job_finished":
                    self.finished[int(ev["num"])] = ev
                elif kind in ("job_started", "job_not_started", "sweep_finished"):
                    log.debug(f"orchestrator: {ev}")
        finally:
            self.done.set()


class _StderrReader(threading.Thread):
    """The binary's own messages (errors only): passed through, the last ones kept."""

    def __init__(self, stream: Any) -> None:
        super().__init__(name="orchestrator-stderr", daemon=True)
        self.stream = stream
        self.lines: List[str] = []

    def run(self) -> None:
        for raw in self.stream:
            line = raw.decode(errors="replace")
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except Exception:
                pass
            self.lines.append(line)
            del self.lines[:-50]


def _run(binary: str, manifest: str, n: int) -> "tuple[Dict[int, Dict[str, Any]], Optional[int]]":
    """Run the binary on the manifest; forward SIGINT (Ctrl-C) and SIGTERM to it and wait
    for it to end its jobs. Returns the jobs' records and the signal that stopped us."""
    kwargs: Dict[str, Any] = {}
    # Its own process group: a terminal's Ctrl-C reaches only us, and we forward it once
    # (a second one makes the binary kill the jobs at once).
    if sys.version_info >= (3, 11):
        kwargs["process_group"] = 0
    else:
        kwargs["preexec_fn"] = os.setpgrp
    proc = subprocess.Popen(
        [binary, "launch", "--manifest", manifest],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )
    reader = _Reader(proc.stdout)
    err_reader = _StderrReader(proc.stderr)
    reader.start()
    err_reader.start()
    stopped_by: List[int] = []

    def forward(sig: int) -> None:
        if not stopped_by:
            stopped_by.append(sig)
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass

    previous_term = None
    if threading.current_thread() is threading.main_thread():
        previous_term = signal.signal(signal.SIGTERM, lambda s, f: forward(signal.SIGTERM))
    try:
        while True:
            try:
                while not reader.done.wait(0.5):
                    pass
                proc.wait()
                break
            except KeyboardInterrupt:
                forward(signal.SIGINT)
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    reader.join()
    err_reader.join()
    code = proc.returncode
    if code in (2, 3) and not stopped_by:
        message = "".join(err_reader.lines).strip()
        what = "refused the launch" if code == 2 else "failed"
        raise RuntimeError(f"orchestrator {what} (exit code {code}): {message}")
    if code is not None and code < 0 and not stopped_by:
        log.error(f"the orchestrator binary was killed by signal {-code}")
    return reader.finished, (stopped_by[0] if stopped_by else None)


def _describe(job: _Job, ev: Optional[Dict[str, Any]], stopped_by: Optional[int]) -> str:
    where = f"job #{job.num} ({' '.join(job.overrides) or 'no overrides'})"
    if ev is None:
        why = (
            f"never started: the sweep was stopped by {signal.Signals(stopped_by).name}"
            if stopped_by is not None
            else "never started: the sweep was stopped"
        )
        return f"{where} {why}"
    status = ev.get("status")
    sig = ev.get("signal")
    code = ev.get("exit_code")
    ended = f"ended by {sig}" if sig else f"exited with code {code}"
    if status == "signaled":
        why = f"was killed by {sig}"
    elif status == "timed_out":
        why = f"ran past its timeout ({ev.get('duration_s')}s) and was {ended}"
    elif status == "spawn_failed":
        why = f"could not start: {ev.get('error')}"
    elif status == "interrupted":
        why = f"was interrupted, {ended}"
    elif status == "halted":
        why = f"was stopped after another job failed, {ended}"
    elif status == "cancelled":
        why = f"was cancelled, {ended}"
    elif status == "out_of_memory":
        why = f"ran out of memory (over mem_gb) and was {ended}"
    elif status == "succeeded":
        why = "exited with code 0 but left no result"
    else:
        why = f"{ended} without a result"
    return f"{where} {why}; its output is in {ev.get('log')}"


def _job_return(
    job: _Job,
    ev: Optional[Dict[str, Any]],
    stopped_by: Optional[int],
    hydra_context: Any,
    master: DictConfig,
) -> JobReturn:
    import pickle

    if os.path.exists(job.result_file):
        try:
            with open(job.result_file, "rb") as f:
                ret = pickle.load(f)
            if isinstance(ret, JobReturn):
                if ret.overrides is None:
                    ret.overrides = job.overrides
                return ret
            error: BaseException = TypeError(f"the result of job #{job.num} is not a JobReturn")
        except Exception as e:
            error = OrchestratorJobError(f"cannot read the result of job #{job.num}: {e!r}")
    else:
        error = OrchestratorJobError(_describe(job, ev, stopped_by))
    config = job.config
    if config is None:
        # The job died before it could return its config: compose it as it did.
        try:
            config = compose_job(hydra_context, master, job.overrides, job.num)
        except Exception:
            config = None
    if config is None:
        return JobReturn(
            overrides=job.overrides,
            working_dir=job.dir,
            task_name=job.name,
            status=JobStatus.FAILED,
            _return_value=error,
        )
    task_cfg = OmegaConf.masked_copy(config, [k for k in config.keys() if k != "hydra"])
    chdir = config.hydra.job.get("chdir")
    return JobReturn(
        overrides=job.overrides,
        cfg=task_cfg,
        hydra_cfg=OmegaConf.masked_copy(config, "hydra"),
        working_dir=job.dir if chdir else os.getcwd(),
        task_name=job.name,
        status=JobStatus.FAILED,
        _return_value=error,
    )


def _reraise(sig: int) -> None:
    """Stopped by a signal: now that every job has ended, behave as that signal would."""
    if sig == signal.SIGINT:
        raise KeyboardInterrupt
    # Its handler is ours no more (restored in _run): the default one ends this process.
    os.kill(os.getpid(), sig)
    time.sleep(0.1)
