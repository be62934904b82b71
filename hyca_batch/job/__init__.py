"""The batch job's driver: ``plan`` (validate, resume, the dry run's counts), ``solver_map`` (HyCa's map for the
run), ``execute`` (Ray and the replica pool, retries), ``progress`` (summary, progress.json, run documents),
``run`` (all of it)."""

from hyca_batch.job.errors import JobError
from hyca_batch.job.plan import PlanCounts
from hyca_batch.job.progress import JobSummary
from hyca_batch.job.run import dry_run, run_job

__all__ = ["JobError", "JobSummary", "PlanCounts", "dry_run", "run_job"]
