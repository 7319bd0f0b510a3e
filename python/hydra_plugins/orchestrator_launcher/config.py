"""The launcher's config: joblib's keys (same names, defaults and meaning, so a joblib user
switches with `hydra/launcher=orchestrator` and keeps `hydra.launcher.n_jobs=4`), plus
orchestrator's own."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class OrchestratorLauncherConf:
    _target_: str = (
        "hydra_plugins.orchestrator_launcher.orchestrator_launcher.OrchestratorLauncher"
    )

    # --- joblib's keys (hydra_joblib_launcher's JobLibLauncherConf) ---
    # jobs at once; negative: CPUs + 1 + n_jobs (-1 = all the CPUs this process may use)
    n_jobs: int = -1
    # None, loky, multiprocessing, threading, sequential: every job is its own process
    # whatever the backend; sequential forces n_jobs=1. slurm: the jobs run on a Slurm
    # cluster (one job array per batch, n_jobs at a time; see `slurm`)
    backend: Optional[str] = None
    # accepted for compatibility: jobs are processes either way
    prefer: str = "processes"
    require: Optional[str] = None
    # joblib's progress verbosity
    verbose: int = 0
    # seconds, per job from its start: SIGTERM to the job's process group, SIGKILL after
    # grace_period; the job is FAILED and the others go on
    timeout: Optional[float] = None
    # accepted with joblib's rules; each job is prepared just before it starts
    pre_dispatch: str = "2*n_jobs"
    batch_size: str = "auto"
    temp_folder: Optional[str] = None
    max_nbytes: Optional[str] = None
    mmap_mode: str = "r"

    # --- orchestrator's own ---
    # time between SIGTERM (or a forwarded Ctrl-C) and SIGKILL: a duration ("5s", "500ms")
    # or seconds
    grace_period: Any = "5s"
    # never (run every job, as Hydra), soon (no new job after a failure), now (also end
    # the running ones, as joblib)
    halt: str = "never"
    # per-slot environment: NAME: "template with {slot}" or NAME: [v0, v1, ...]
    # (e.g. CUDA_VISIBLE_DEVICES: [0, 1] gives each concurrent job its own GPU)
    slot_env: Dict[str, Any] = field(default_factory=dict)
    # how many times a job is tried again after it failed, timed out or was killed by a
    # signal (never after a stop); each attempt's lines stay in its capture log, and
    # jobs.jsonl keeps one record with the attempts
    retries: int = 0
    # the wait before the first retry (doubled for each later one, up to 5 minutes);
    # None = 1s
    retry_delay: Any = None
    # which endings are retried: failed, timed_out, signaled, spawn_failed; None = the
    # first three
    retry_on: Optional[List[str]] = None
    # fork each job from a warm interpreter (one per sweep, Linux) that has already imported
    # Hydra, this plugin and what the task function needs: a job then costs a fork instead
    # of an interpreter start, and is still its own process (killed, timed, logged as
    # before). The binary runs jobs fresh when forking is not safe (a preloaded module
    # started a thread, CUDA is initialised) and says so once. false: a fresh process each.
    warm: bool = True
    # more modules for the warm interpreter to import first (e.g. [torch, my_package]);
    # `module:function` calls a warm-up hook; never anything that starts threads or CUDA
    preload: List[str] = field(default_factory=list)
    # with backend=slurm: the Slurm settings, with the key names of Hydra's submitit launcher
    # (partition, qos, account, timeout_min, cpus_per_task, mem_gb, gres, array_parallelism,
    # additional_parameters, setup, ...); the sweep dir must be on a filesystem the nodes share
    slurm: Dict[str, Any] = field(default_factory=dict)
    # warm jobs end with os._exit once the task has returned and its result is written,
    # skipping the interpreter's teardown (8-28 ms of CPU a job measured here); atexit handlers and files
    # the task left unflushed are then lost
    fast_exit: bool = False
    # each job's memory limit in gigabytes (memory plus swap), as submitit's mem_gb: a job over
    # it is killed by the kernel and recorded out_of_memory. Locally it needs a memory cgroup
    # (root, or a delegated cgroup subtree; refused otherwise); on Slurm it is --mem unless
    # slurm.mem_gb is set
    mem_gb: Optional[float] = None
    # admission, as GNU parallel's --memfree, --load and --delay: start no job while less
    # memory than this is available (bytes, or a size such as "2G"), or while the 1-minute
    # load average is above max_load; at least start_delay (a duration, or seconds) between
    # two job starts. None: no such limit
    min_free_memory: Any = None
    max_load: Optional[float] = None
    start_delay: Any = None


ConfigStore.instance().store(
    group="hydra/launcher",
    name="orchestrator",
    node=OrchestratorLauncherConf,
    provider="orchestrator",
)
