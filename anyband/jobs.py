"""Job rows as the record of truth: creation, the worker lease, progress, terminal states, reconciling."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from anyband.errors import IdempotencyConflict
from anyband.jobspec import JobSpec, spec_sha256
from anyband.store import (
    JOB_ACTIVE,
    JOB_CANCELLED,
    JOB_FAILED,
    JOB_QUEUED,
    JOB_RUNNING,
    JOB_SUCCEEDED,
    Job,
    Model,
    Scene,
    Worker,
    new_id,
    utcnow,
)

log = logging.getLogger("anyband.jobs")

# What a lease holder may write while it works; status changes go through finish/fail/cancel.
PROGRESS_FIELDS = {
    "jobs": frozenset({"epoch", "metrics", "resumed_from_epoch"}),
    "scenes": frozenset({"windows_done", "windows_total"}),
}
# Rows a worker takes with a lease: training jobs and scene jobs share the rules.
Leased = type[Job] | type[Scene]


def create_job(session: Session, spec: JobSpec, idempotency_key: str | None) -> tuple[Job, bool]:
    """A new queued job, or the earlier job with this Idempotency-Key (created is False)."""
    digest = spec_sha256(spec)
    if idempotency_key is not None:
        earlier = _by_idempotency_key(session, idempotency_key, digest)
        if earlier is not None:
            return earlier, False
    job = Job(
        id=new_id(),
        dataset_id=spec.dataset_id,
        spec=spec.model_dump(mode="json"),
        spec_sha256=digest,
        idempotency_key=idempotency_key,
        status=JOB_QUEUED,
        epochs=spec.epochs,
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same key won the insert
        session.rollback()
        earlier = _by_idempotency_key(session, idempotency_key, digest)
        if earlier is None:
            raise
        return earlier, False
    return job, True


def _by_idempotency_key(session: Session, key: str, digest: str) -> Job | None:
    earlier = session.scalar(select(Job).where(Job.idempotency_key == key))
    if earlier is not None and earlier.spec_sha256 != digest:
        raise IdempotencyConflict(key, earlier.id)
    return earlier


def mark_enqueued(sessions: sessionmaker, job_id: str, *, table: Leased = Job) -> None:
    with sessions.begin() as session:
        session.execute(
            update(table)
            .where(table.id == job_id, table.status == JOB_QUEUED)
            .values(enqueued_at=utcnow())
        )


def claim(
    sessions: sessionmaker, job_id: str, owner: str, lease_seconds: float, *, table: Leased = Job
) -> Job | Scene | None:
    """Take the lease on a job: it must be queued, or running with a lease that ran out.

    One conditional UPDATE, so of two workers given the same job at once exactly one wins.
    """
    now = utcnow()
    with sessions.begin() as session:
        result = session.execute(
            update(table)
            .where(
                table.id == job_id,
                or_(
                    table.status == JOB_QUEUED,
                    (table.status == JOB_RUNNING)
                    & (or_(table.lease_expires_at.is_(None), table.lease_expires_at < now)),
                ),
            )
            .values(
                status=JOB_RUNNING,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=table.attempts + 1,
                started_at=now,
                error=None,
            )
        )
        if result.rowcount != 1:
            return None
        return session.get(table, job_id)


def renew(
    sessions: sessionmaker,
    job_id: str,
    owner: str,
    lease_seconds: float,
    *,
    table: Leased = Job,
    **values,
) -> bool:
    """Extend the lease (and write progress `values`); False once the job is no longer ours."""
    _check_progress("renew", table, values)
    with sessions.begin() as session:
        return _update_held(
            session,
            table,
            job_id,
            owner,
            lease_expires_at=utcnow() + timedelta(seconds=lease_seconds),
            **values,
        )


def _check_progress(verb: str, table: Leased, values: dict) -> None:
    allowed = PROGRESS_FIELDS[table.__tablename__]
    if not set(values) <= allowed:
        raise ValueError(f"{verb} writes only {sorted(allowed)}. Received: {sorted(values)}")


def _update_held(session: Session, table: Leased, job_id: str, owner: str, **values) -> bool:
    """Write `values` to the job if it is running under `owner`'s lease; False if it is not."""
    result = session.execute(
        update(table)
        .where(table.id == job_id, table.lease_owner == owner, table.status == JOB_RUNNING)
        .values(**values)
    )
    return result.rowcount == 1


def _end(session: Session, table: Leased, job_id: str, owner: str, status: str, **values) -> bool:
    """Running -> `status`, only for the lease holder; the lease is released."""
    return _update_held(
        session,
        table,
        job_id,
        owner,
        status=status,
        finished_at=utcnow(),
        lease_owner=None,
        lease_expires_at=None,
        **values,
    )


def finish(sessions: sessionmaker, job_id: str, owner: str, model: Model) -> bool:
    """Publish the model and mark the job succeeded in one transaction, if it is still ours."""
    with sessions() as session:
        if not _end(session, Job, job_id, owner, JOB_SUCCEEDED, model_id=model.id):
            session.rollback()
            return False
        session.add(model)
        session.commit()
        return True


def finish_scene(
    sessions: sessionmaker, scene_id: str, owner: str, warnings: list[str] | None = None
) -> bool:
    """Succeeded, if still this owner's; `warnings` (what the mapped pixels showed) replace those
    the scene was given when it was submitted, unless None."""
    values = {} if warnings is None else {"warnings": warnings or None}
    with sessions.begin() as session:
        return _end(
            session,
            Scene,
            scene_id,
            owner,
            JOB_SUCCEEDED,
            windows_done=Scene.windows_total,
            **values,
        )


def fail(
    sessions: sessionmaker, job_id: str, owner: str, error: str, *, table: Leased = Job
) -> bool:
    with sessions.begin() as session:
        return _end(session, table, job_id, owner, JOB_FAILED, error=error)


def release(
    sessions: sessionmaker, job_id: str, owner: str, *, table: Leased = Job, **values
) -> bool:
    """Hand a running job back (its worker is shutting down): queued again at once rather than
    when its lease runs out, and the attempt does not count towards `max_attempts`, since the
    job did not fail and its worker did not die. Not yet enqueued: the next reconcile pass of
    any worker enqueues it. `values`: progress to reset, as for `renew`. False when the job is
    no longer this owner's."""
    _check_progress("release", table, values)
    with sessions.begin() as session:
        return _update_held(
            session,
            table,
            job_id,
            owner,
            status=JOB_QUEUED,
            lease_owner=None,
            lease_expires_at=None,
            enqueued_at=None,
            attempts=table.attempts - 1,
            **values,
        )


def cancel(session: Session, job_id: str, *, table: Leased = Job) -> bool:
    """Cancel a queued or running job (or scene); False when it already reached a terminal
    state. A worker running it loses its lease at its next renewal and stops there."""
    result = session.execute(
        update(table)
        .where(table.id == job_id, table.status.in_(JOB_ACTIVE))
        .values(status=JOB_CANCELLED, finished_at=utcnow(), lease_owner=None, lease_expires_at=None)
    )
    session.commit()
    return result.rowcount == 1


def reconcile(
    sessions: sessionmaker,
    enqueue: Callable[[str], None],
    *,
    requeue_after_seconds: float,
    max_attempts: int = 3,
    now: datetime | None = None,
    table: Leased = Job,
) -> list[str]:
    """Re-enqueue what the broker may have lost; the job row decides what runs.

    - running jobs whose lease ran out (the worker died): back to queued, enqueued again; the
      next worker resumes them from their last checkpoint. After `max_attempts` such deaths
      the job fails instead, with an error that says so;
    - queued jobs never enqueued (the broker was down) or enqueued longer ago than
      `requeue_after_seconds` without a worker taking them (the filesystem transport drops a
      message whose consumer is killed). A duplicate message is harmless: `claim` refuses it.
    """
    now = now or utcnow()
    with sessions.begin() as session:
        expired = session.scalars(
            select(table.id).where(table.status == JOB_RUNNING, table.lease_expires_at < now)
        ).all()
        orphaned = []
        for job_id in expired:
            still_expired = (
                table.id == job_id,
                table.status == JOB_RUNNING,
                table.lease_expires_at < now,
            )
            gave_up = session.execute(
                update(table)
                .where(*still_expired, table.attempts >= max_attempts)
                .values(
                    status=JOB_FAILED,
                    error=(
                        f"the worker running this job stopped answering {max_attempts} times "
                        "(killed, out of memory, or its machine was lost); see the workers' logs"
                    ),
                    finished_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            if gave_up.rowcount == 1:
                log.error("job %s: its worker died %d times; failed", job_id, max_attempts)
                continue
            result = session.execute(
                update(table)
                .where(*still_expired)
                .values(status=JOB_QUEUED, lease_owner=None, lease_expires_at=None)
            )
            if result.rowcount == 1:
                orphaned.append(job_id)
        stale = session.execute(
            select(table.id, table.enqueued_at).where(
                table.status == JOB_QUEUED,
                or_(
                    table.enqueued_at.is_(None),
                    table.enqueued_at < now - timedelta(seconds=requeue_after_seconds),
                ),
            )
        ).all()
    never_enqueued = {job_id for job_id, enqueued_at in stale if enqueued_at is None}
    requeued = list(dict.fromkeys([*orphaned, *(job_id for job_id, _ in stale)]))
    for job_id in requeued:
        if job_id in orphaned:
            why = "its worker's lease ran out"
        elif job_id in never_enqueued:
            why = "not enqueued (the broker was down, or a stopping worker handed it back)"
        else:
            why = "no worker took it up"
        log.warning("%s %s: %s; enqueuing it", table.__tablename__[:-1], job_id, why)
        enqueue(job_id)
        mark_enqueued(sessions, job_id, table=table)
    return requeued


def beat_worker(
    sessions: sessionmaker,
    worker_id: str,
    *,
    hostname: str,
    pid: int,
    devices: list[str],
    current_job_id: str | None,
) -> None:
    """Insert or refresh this worker's heartbeat row (counted by /healthz)."""
    with sessions.begin() as session:
        row = session.get(Worker, worker_id)
        if row is None:
            row = Worker(id=worker_id, hostname=hostname, pid=pid, devices=devices)
            session.add(row)
        row.last_seen = utcnow()
        row.current_job_id = current_job_id


def forget_worker(sessions: sessionmaker, worker_id: str) -> None:
    """Remove a worker's heartbeat row: it is stopping."""
    with sessions.begin() as session:
        session.execute(delete(Worker).where(Worker.id == worker_id))


def live_workers(session: Session, within_seconds: float) -> list[Worker]:
    since = utcnow() - timedelta(seconds=within_seconds)
    return list(session.scalars(select(Worker).where(Worker.last_seen >= since)).all())
