"""One job of a sweep, in the process orchestrator started for it:

    python -m hydra_plugins.orchestrator_launcher._worker <job file> <result file>

runs Hydra's `run_job` for the job's sweep config, exactly as the joblib launcher's
`execute_job` does in its workers (so Hydra itself writes `.hydra/*.yaml` and `<task>.log`),
and writes the `JobReturn` to the result file (cloudpickle; temporary file + rename). Exit
code 0 when the task completed, 1 when it failed.

`run_job_file` does all of it and can be called from a process that has already imported
Hydra and the app (a warm fork server forking one child per job).
"""
import os
import pickle
import sys
import traceback
from typing import Any, Dict, List, Sequence

COMPLETED_EXIT = 0
FAILED_EXIT = 1


def _use_sys_path(path: List[str]) -> None:
    # The launcher's own sys.path, in its order (the app's dir first, as in the launcher), so
    # that what the task function refers to by module imports the same files.
    rest = [p for p in sys.path if p not in path]
    sys.path[:] = list(path) + rest


# What the warm interpreter unpickled in `warm_up`, by path: a job forked from it finds the
# objects there (its own copy-on-write copy of them), as if it had unpickled them itself.
_WARM_COMMON: Dict[str, Any] = {}
# How many jobs of this process found them there (for the tests).
WARM_HITS = 0
_MODULE = "hydra_plugins.orchestrator_launcher._worker"


def _warm_module() -> Any:
    """This module as the warm interpreter imported it: a job runs it again as __main__
    (`-m`), whose globals are new; the preloaded copy, with the cache, is in sys.modules."""
    return sys.modules.get(_MODULE) or sys.modules[__name__]


def warm_up() -> None:
    """Run in the warm interpreter before it forks jobs (never a task): import what a job
    imports, Hydra's lazily imported parts and its plugin scan included, and unpickle the
    batch's shared objects (which imports the task function's modules)."""
    import cloudpickle  # noqa: F401 - jobs write their results with it
    from hydra.core.plugins import Plugins
    from hydra.core.utils import run_job, setup_globals  # noqa: F401

    Plugins.instance()
    common = os.environ.get("ORCHESTRATOR_HYDRA_COMMON")
    if common:
        with open(common, "rb") as f:
            shared = pickle.load(f)
        _warm_module()._WARM_COMMON[common] = shared
        # One composition, thrown away: what Hydra imports and sets up lazily on the first
        # one (OmegaConf's grammar, resolvers, the config sources) is then done once here,
        # not in every job. Nothing of it is kept, and no task runs.
        try:
            shared["hydra_context"].config_loader.load_sweep_config(shared["master_config"], [])
        except Exception:
            pass


def load_job(job_path: str) -> Dict[str, Any]:
    """The job file: a plain pickle of {sys_path, common, config, overrides, num, id, dir},
    where `common` names a cloudpickle shared by the batch's jobs (hydra_context,
    task_function, singleton_state, master_config) and `config` is this job's sweep config,
    cloudpickled, or None when the job composes it from master_config and its overrides."""
    with open(job_path, "rb") as f:
        job = pickle.load(f)
    _use_sys_path(job["sys_path"])
    warm = _warm_module()
    common = warm._WARM_COMMON.get(job["common"])
    if common is None:
        with open(job["common"], "rb") as f:
            common = pickle.load(f)
    else:
        warm.WARM_HITS += 1
    job.update(common)
    if job["config"] is not None:
        job["config"] = pickle.loads(job["config"])
    return job


def compose_job(hydra_context: Any, config: Any, overrides: Sequence[str], num: int) -> Any:
    """A job's sweep config, as Hydra's joblib launcher makes it in its workers (also used
    by the launcher when it needs a job's dir before the job runs)."""
    from omegaconf import open_dict

    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{num}"
        sweep_config.hydra.job.num = num
    return sweep_config


def run_job_file(job_path: str, result_path: str) -> int:
    """Run the job described in `job_path`, write its JobReturn to `result_path`, and return
    the exit code (0 completed, 1 failed)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals

    try:
        job = load_job(job_path)
        setup_globals()
        Singleton.set_state(job["singleton_state"])
        sweep_config = job["config"]
        if sweep_config is None:
            # Composed here, as in the joblib launcher's workers.
            sweep_config = compose_job(
                job["hydra_context"], job["master_config"], job["overrides"], job["num"]
            )
        HydraConfig.instance().set_config(sweep_config)
        ret = run_job(
            hydra_context=job["hydra_context"],
            task_function=job["task_function"],
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
    except BaseException as e:  # noqa: B902 - outside the task: report it as the job's failure
        traceback.print_exc()
        ret = JobReturn()
        ret.status = JobStatus.FAILED
        ret._return_value = e
        _write_result(ret, result_path)
        return FAILED_EXIT
    try:
        _report(ret, job)
    except Exception:  # the result matters more than these messages
        pass
    _write_result(ret, result_path)
    return COMPLETED_EXIT if ret.status == JobStatus.COMPLETED else FAILED_EXIT


def _report(ret: Any, job: Dict[str, Any]) -> None:
    from hydra.core.utils import JobStatus

    output_dir = _output_dir(ret)
    if output_dir is not None and os.path.abspath(output_dir) != job["dir"]:
        print(
            f"[orchestrator launcher] warning: Hydra put this job in {output_dir}, not in "
            f"{job['dir']} where its capture log is",
            file=sys.stderr,
        )
    if ret.status == JobStatus.FAILED and isinstance(ret._return_value, BaseException):
        # In the job's capture log (and on the console) as it happens; the sweeper raises the
        # same exception in the launcher once the batch is done.
        e = ret._return_value
        print(f"The task raised (overrides: {ret.overrides}):", file=sys.stderr)
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)


def _output_dir(ret: Any) -> Any:
    """Where Hydra put the job (`hydra.runtime.output_dir`, Hydra 1.2 and later)."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir", default=None)
    except Exception:
        return None


def _dumps(ret: Any) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(ret)


def _write_result(ret: Any, result_path: str) -> None:
    from hydra.core.utils import JobStatus

    from hydra_plugins.orchestrator_launcher._errors import TaskError

    try:
        data = _dumps(ret)
    except Exception as pickling_error:
        value = ret._return_value
        if ret.status == JobStatus.FAILED and isinstance(value, BaseException):
            text = "".join(traceback.format_exception(type(value), value, value.__traceback__))
            ret._return_value = TaskError(
                f"the task raised an exception that cannot be pickled "
                f"({pickling_error!r}); its traceback:\n{text}"
            )
        else:
            ret.status = JobStatus.FAILED
            ret._return_value = TaskError(
                f"the task's return value cannot be pickled ({pickling_error!r}): "
                f"{_safe_repr(value)}"
            )
        try:
            data = _dumps(ret)
        except Exception as second:
            # Something else in the JobReturn (a config value): keep only the failure.
            bare = type(ret)()
            bare.status = JobStatus.FAILED
            bare._return_value = TaskError(f"the job's result cannot be pickled: {second!r}")
            data = _dumps(bare)
    tmp = f"{result_path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, result_path)


def _safe_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as e:
        return f"<repr failed: {e!r}>"
    return text if len(text) <= 2000 else text[:2000] + "..."


def main(argv: List[str]) -> int:
    if len(argv) != 2:
        print(
            "usage: python -m hydra_plugins.orchestrator_launcher._worker JOB_FILE RESULT_FILE",
            file=sys.stderr,
        )
        return 2
    code = run_job_file(argv[0], argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
