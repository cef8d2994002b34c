"""Training jobs: submit (validated against dataset and weights, idempotent), list, show, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response

from anyband import jobs
from anyband.errors import IdempotencyConflict, InvalidJobSpecError
from anyband.jobspec import JobSpec, resolve_spec
from anyband.paths import job_dir
from anyband.queues import TRAIN_TASK
from anyband.store import Dataset, Job, WeightsFile
from service.broker import enqueue
from service.deps import (
    Limit,
    Offset,
    SessionDep,
    SettingsDep,
    newest_first,
    refuse_while_active,
    remove,
    require_api_key,
)
from service.problems import PROBLEM_RESPONSES, Problem
from service.schemas import JobPublic, JobsPublic

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    dependencies=[Depends(require_api_key)],
    responses=PROBLEM_RESPONSES,
)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="resubmitting with the same key returns the first job (409 if the spec differs)",
    ),
]


@router.post("", status_code=202, response_model=JobPublic, operation_id="create_job")
def create_job(
    spec: JobSpec,
    request: Request,
    response: Response,
    session: SessionDep,
    idempotency_key: IdempotencyKey = None,
):
    try:
        spec = resolve_spec(
            spec,
            session.get(Dataset, spec.dataset_id),
            lambda weights_id: session.get(WeightsFile, weights_id) is not None,
        )
    except InvalidJobSpecError as exc:
        fields = ", ".join(e["field"] for e in exc.errors)
        raise Problem(422, f"the job spec does not fit: check {fields}", errors=exc.errors) from exc
    try:
        job, created = jobs.create_job(session, spec, idempotency_key)
    except IdempotencyConflict as exc:
        raise Problem(409, str(exc), job_id=exc.job_id) from exc
    if created and enqueue(request.app.state.celery, TRAIN_TASK, job.id):
        jobs.mark_enqueued(request.app.state.sessions, job.id)
        session.refresh(job)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


@router.get("", response_model=JobsPublic, operation_id="list_jobs")
def list_jobs(
    session: SessionDep,
    status: str | None = None,
    dataset_id: str | None = None,
    offset: Offset = 0,
    limit: Limit = 100,
):
    rows, count = newest_first(session, Job, offset, limit, status=status, dataset_id=dataset_id)
    return JobsPublic(data=[JobPublic.model_validate(row) for row in rows], count=count)


@router.get("/{job_id}", response_model=JobPublic, operation_id="get_job")
def get_job(job_id: str, session: SessionDep):
    return JobPublic.model_validate(get_or_404(session, job_id))


@router.post(
    "/{job_id}/cancel", status_code=202, response_model=JobPublic, operation_id="cancel_job"
)
def cancel_job(job_id: str, session: SessionDep):
    job = get_or_404(session, job_id)
    if not jobs.cancel(session, job_id):
        session.refresh(job)
        raise Problem(
            409,
            f"job '{job_id}' already {job.status}; only queued or running jobs can be cancelled",
        )
    session.refresh(job)
    return JobPublic.model_validate(job)


@router.delete("/{job_id}", status_code=204, operation_id="delete_job")
def delete_job(job_id: str, session: SessionDep, settings: SettingsDep):
    """A finished, failed or cancelled job's record and what is left of its checkpoints (a
    failed job keeps them). The model it trained is kept: DELETE /v1/models/{id} removes it."""
    job = get_or_404(session, job_id)
    refuse_while_active(job)
    return remove(session, job, job_dir(settings.data_dir, job_id))


def get_or_404(session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise Problem(404, f"no job with id '{job_id}'")
    return job
