"""Exceptions carried in a FAILED JobReturn (importable in the launcher and in the job)."""


class OrchestratorJobError(RuntimeError):
    """The job left no result: it was killed by a signal, ran past its timeout, could not
    start, was interrupted, or never started. The message says which, and where its log is."""


class TaskError(RuntimeError):
    """The task raised an exception that could not be pickled back to the launcher (or
    returned a value that could not be): the message holds the job's traceback as text."""
