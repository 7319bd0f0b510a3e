"""Hydra launcher plugin: `hydra/launcher=orchestrator` runs each job of a sweep as a
supervised process under the `orchestrator` binary (installed with this package).

Importing this package costs nothing beyond Hydra's own imports: the launching code
(`_core`) and the job's entry point (`_worker`) are imported only when a sweep runs.
"""
