"""Ray: the replica class, the job driver, and its summary."""

from hyca_batch.runner.job import JobError, JobSummary, run_job

__all__ = ["JobError", "JobSummary", "run_job"]
