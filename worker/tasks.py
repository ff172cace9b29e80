"""The Celery tasks: thin, named, taking ids only (Celery's task guidance).

Each task first takes the lease of its row in the database; a message the
broker delivers twice finds the lease held and returns ``{"skipped": reason}``.
"""

from __future__ import annotations

from typing import Any

from worker import runner
from worker.app import app


@app.task(name="worker.run_job")
def run_job(job_id: str) -> dict[str, Any]:
    """Train (or resume) the job ``job_id``."""
    return runner.run_job(job_id)


@app.task(name="worker.run_evaluation")
def run_evaluation(evaluation_id: str) -> dict[str, Any]:
    """Evaluate an existing checkpoint with AutoAttack."""
    return runner.run_evaluation(evaluation_id)
