"""The job's one error type: it cannot start or cannot go on, and the message says why and what to do."""


class JobError(RuntimeError):
    """The job cannot start (or its replicas cannot run); the message says why and what to do."""
