"""The dataset job on Ray Data: stages (``stages``), outputs and resume state (``outputs``), the job (``job``)."""

from nstray.pipeline.job import JobSummary, run_job

__all__ = ["JobSummary", "run_job"]
