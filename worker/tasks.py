"""Tasks: thin, idempotent, by id. The job row, not the message, says whether to run."""

from __future__ import annotations

from anyband.queues import SCENE_TASK, TRAIN_TASK
from worker.app import WORKER_ID, app, current_job, settings
from worker.pool import shutting_down


@app.task(name=TRAIN_TASK, acks_late=True, ignore_result=True)
def train(job_id: str) -> str:
    from anyband.runner import run_training_job

    current_job["id"] = job_id
    try:
        return run_training_job(job_id, settings, WORKER_ID, interrupted=shutting_down.is_set)
    finally:
        current_job["id"] = None


@app.task(name=SCENE_TASK, acks_late=True, ignore_result=True)
def map_scene(scene_id: str) -> str:
    from anyband.scene_runner import run_scene_job

    return run_scene_job(scene_id, settings, WORKER_ID, interrupted=shutting_down.is_set)
