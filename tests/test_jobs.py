"""Job rows on a real SQLite file and a real PostgreSQL server: idempotency, the lease, reconcile."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from anyband.jobs import (
    IdempotencyConflict,
    beat_worker,
    cancel,
    claim,
    create_job,
    fail,
    finish,
    live_workers,
    mark_enqueued,
    reconcile,
    release,
    renew,
)
from anyband.jobspec import JobSpec
from anyband.store import (
    JOB_CANCELLED,
    JOB_FAILED,
    JOB_QUEUED,
    JOB_RUNNING,
    JOB_SUCCEEDED,
    Base,
    Dataset,
    Job,
    Model,
    Scene,
    Worker,
    add_missing_columns,
    create_schema,
    init_db,
    make_engine,
    new_id,
    utcnow,
)
from tests.test_jobspec import add_ready_dataset

LEASE_SECONDS = 60.0


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request, tmp_path) -> sessionmaker:
    """A session factory on an empty schema: a fresh SQLite file, or the `postgres_server` one."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/t.db"
    else:
        url = request.getfixturevalue("postgres_server")
        engine = create_engine(url)
        Base.metadata.drop_all(engine)  # each test starts from an empty schema, as on SQLite
        engine.dispose()
    factory = init_db(url)
    yield factory
    factory.kw["bind"].dispose()


@pytest.fixture
def dataset(sessions) -> Dataset:
    with sessions() as session:
        return add_ready_dataset(session)


@pytest.fixture
def new_job(sessions, dataset):
    """Creates a queued job (optionally with an Idempotency-Key) and returns its id."""

    def create(key: str | None = None, **spec_fields) -> str:
        with sessions() as session:
            job, created = create_job(session, JobSpec(dataset_id=dataset.id, **spec_fields), key)
        assert created
        return job.id

    return create


def load(sessions: sessionmaker, job_id: str) -> Job:
    """The job as the database holds it now (a fresh session, nothing cached)."""
    with sessions() as session:
        return session.get(Job, job_id)


def count(sessions: sessionmaker, table) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(table))


def set_job(sessions: sessionmaker, job_id: str, **values) -> None:
    """Write columns directly, as a clock moving on (or a crashed worker) would leave them."""
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def expire_lease(sessions: sessionmaker, job_id: str) -> None:
    set_job(sessions, job_id, lease_expires_at=utcnow() - timedelta(seconds=1))


def model_for(dataset: Dataset, job_id: str) -> Model:
    return Model(
        id=new_id(),
        job_id=job_id,
        dataset_id=dataset.id,
        classes=dataset.classes,
        bands=[1, 2, 3, 4, 5, 6],
        dataset_bands=dataset.num_bands,
        channels=6,
        init_strategy="repeat",
        weights="imagenet",
        tile_height=dataset.tile_height,
        tile_width=dataset.tile_width,
        dtype=dataset.dtype,
        nodata=dataset.nodata,
        metrics={"accuracy": 0.9, "macro_f1": 0.88, "num_samples": 2},
        sha256="0" * 64,
        size_bytes=1234,
    )


# ---------------------------------------------------------------- creation and idempotency


def test_a_created_job_is_queued_with_its_spec(sessions, dataset):
    spec = JobSpec(dataset_id=dataset.id, epochs=3, freeze_epochs=1)
    with sessions() as session:
        job, created = create_job(session, spec, None)

    stored = load(sessions, job.id)
    assert created
    assert stored.status == JOB_QUEUED
    assert stored.dataset_id == dataset.id
    assert stored.epochs == 3
    assert stored.spec == spec.model_dump(mode="json")
    assert stored.attempts == 0 and stored.lease_owner is None and stored.enqueued_at is None


def test_jobs_without_an_idempotency_key_are_always_new(sessions, new_job):
    assert new_job() != new_job()
    assert count(sessions, Job) == 2


def test_same_idempotency_key_and_spec_return_the_first_job(sessions, dataset, new_job):
    first_id = new_job("key-1", epochs=3)

    with sessions() as session:
        again, created = create_job(session, JobSpec(dataset_id=dataset.id, epochs=3), "key-1")

    assert not created
    assert again.id == first_id
    assert count(sessions, Job) == 1


def test_same_idempotency_key_with_another_spec_conflicts_naming_the_first_job(
    sessions, dataset, new_job
):
    first_id = new_job("key-1", epochs=3)

    with sessions() as session, pytest.raises(IdempotencyConflict) as caught:
        create_job(session, JobSpec(dataset_id=dataset.id, epochs=4), "key-1")

    assert caught.value.job_id == first_id
    assert first_id in str(caught.value) and "'key-1'" in str(caught.value)
    assert count(sessions, Job) == 1


def test_concurrent_requests_with_one_idempotency_key_create_one_job(sessions, dataset):
    spec = JobSpec(dataset_id=dataset.id, epochs=3)
    start = threading.Barrier(8)
    results: list[object] = []

    def post() -> None:
        start.wait()
        try:
            with sessions() as session:
                job, created = create_job(session, spec, "key-1")
                results.append((job.id, created))
        except Exception as exc:  # recorded so that the assertion below names it
            results.append(exc)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert [r for r in results if isinstance(r, Exception)] == []
    assert len(results) == 8
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert count(sessions, Job) == 1


def test_mark_enqueued_sets_enqueued_at_on_a_queued_job(sessions, new_job):
    job_id = new_job()
    before = utcnow()

    mark_enqueued(sessions, job_id)

    assert load(sessions, job_id).enqueued_at >= before


# ---------------------------------------------------------------- the lease


def test_first_claim_wins_and_a_second_claim_gets_nothing(sessions, new_job):
    job_id = new_job()
    before = utcnow()

    first = claim(sessions, job_id, "worker-a", LEASE_SECONDS)
    second = claim(sessions, job_id, "worker-b", LEASE_SECONDS)

    assert first is not None and first.id == job_id
    assert second is None
    stored = load(sessions, job_id)
    assert stored.status == JOB_RUNNING
    assert stored.lease_owner == "worker-a"
    assert stored.attempts == 1
    assert stored.lease_expires_at >= before + timedelta(seconds=LEASE_SECONDS)
    assert stored.started_at >= before


def test_claim_of_a_missing_job_gets_nothing(sessions):
    assert claim(sessions, "no-such-job", "worker-a", LEASE_SECONDS) is None


def test_of_8_threads_claiming_one_job_at_once_exactly_one_wins(sessions, new_job):
    job_id = new_job()
    owners = [f"worker-{i}" for i in range(8)]
    start = threading.Barrier(len(owners))
    results: dict[str, object] = {}

    def take(owner: str) -> None:
        start.wait()
        try:
            results[owner] = claim(sessions, job_id, owner, LEASE_SECONDS)
        except Exception as exc:  # recorded so that the assertion below names it
            results[owner] = exc

    threads = [threading.Thread(target=take, args=(owner,)) for owner in owners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert set(results) == set(owners)
    errors = [r for r in results.values() if isinstance(r, Exception)]
    assert errors == []
    winners = [owner for owner, job in results.items() if job is not None]
    assert len(winners) == 1
    stored = load(sessions, job_id)
    assert stored.lease_owner == winners[0]
    assert stored.attempts == 1


def test_renew_by_the_owner_extends_the_lease_and_writes_values(sessions, new_job):
    job_id = new_job()
    claim(sessions, job_id, "worker-a", LEASE_SECONDS)
    first_expiry = load(sessions, job_id).lease_expires_at

    renewed = renew(
        sessions, job_id, "worker-a", 10 * LEASE_SECONDS, epoch=3, metrics={"accuracy": 0.5}
    )

    stored = load(sessions, job_id)
    assert renewed
    assert stored.lease_expires_at > first_expiry + timedelta(seconds=LEASE_SECONDS)
    assert stored.epoch == 3
    assert stored.metrics == {"accuracy": 0.5}
    assert stored.status == JOB_RUNNING and stored.lease_owner == "worker-a"


def test_renew_by_another_worker_is_refused_and_changes_nothing(sessions, new_job):
    job_id = new_job()
    claim(sessions, job_id, "worker-a", LEASE_SECONDS)
    before = load(sessions, job_id)

    assert not renew(sessions, job_id, "worker-b", 10 * LEASE_SECONDS, epoch=3)

    after = load(sessions, job_id)
    assert after.lease_expires_at == before.lease_expires_at
    assert after.epoch == 0 and after.lease_owner == "worker-a"


def test_a_job_whose_lease_ran_out_can_be_claimed_again(sessions, new_job):
    job_id = new_job()
    claim(sessions, job_id, "worker-a", 0.05)
    assert claim(sessions, job_id, "worker-b", LEASE_SECONDS) is None  # still worker-a's

    time.sleep(0.2)  # the 50 ms lease runs out
    taken = claim(sessions, job_id, "worker-b", LEASE_SECONDS)

    assert taken is not None
    stored = load(sessions, job_id)
    assert stored.lease_owner == "worker-b"
    assert stored.attempts == 2


def test_after_a_takeover_the_old_owner_can_neither_renew_finish_nor_fail(
    sessions, dataset, new_job
):
    job_id = new_job()
    claim(sessions, job_id, "worker-a", LEASE_SECONDS)
    expire_lease(sessions, job_id)
    assert claim(sessions, job_id, "worker-b", LEASE_SECONDS) is not None
    before = load(sessions, job_id)

    assert not renew(sessions, job_id, "worker-a", LEASE_SECONDS, epoch=5)
    assert not finish(sessions, job_id, "worker-a", model_for(dataset, job_id))
    assert not fail(sessions, job_id, "worker-a", "old worker gave up")

    after = load(sessions, job_id)
    assert after.status == JOB_RUNNING
    assert after.lease_owner == "worker-b"
    assert after.lease_expires_at == before.lease_expires_at
    assert after.attempts == 2
    assert after.epoch == 0 and after.error is None and after.model_id is None
    assert count(sessions, Model) == 0
    assert renew(sessions, job_id, "worker-b", LEASE_SECONDS)  # the new owner still holds it


def test_finish_publishes_one_model_and_marks_the_job_succeeded(sessions, dataset, new_job):
    job_id = new_job()
    claim(sessions, job_id, "worker-a", LEASE_SECONDS)
    model = model_for(dataset, job_id)

    assert finish(sessions, job_id, "worker-a", model)

    stored = load(sessions, job_id)
    assert stored.status == JOB_SUCCEEDED
    assert stored.model_id == model.id
    assert stored.finished_at is not None
    assert stored.lease_owner is None and stored.lease_expires_at is None
    with sessions() as session:
        models = session.scalars(select(Model)).all()
    assert [(m.id, m.job_id, m.sha256) for m in models] == [(model.id, job_id, "0" * 64)]


def test_finish_whose_model_cannot_be_published_leaves_the_job_running(sessions, dataset, new_job):
    first, second = new_job(), new_job()
    for job_id in (first, second):
        claim(sessions, job_id, "worker-a", LEASE_SECONDS)
    published = model_for(dataset, first)
    assert finish(sessions, first, "worker-a", published)
    clashing = model_for(dataset, second)
    clashing.id = published.id  # the insert fails on the primary key, after the job's UPDATE

    with pytest.raises(IntegrityError):
        finish(sessions, second, "worker-a", clashing)

    stored = load(sessions, second)
    assert stored.status == JOB_RUNNING and stored.model_id is None
    assert stored.lease_owner == "worker-a"
    assert count(sessions, Model) == 1


def test_finish_after_cancel_is_refused_and_publishes_no_model(sessions, dataset, new_job):
    job_id = new_job()
    claim(sessions, job_id, "worker-a", LEASE_SECONDS)
    with sessions() as session:
        assert cancel(session, job_id)

    assert not finish(sessions, job_id, "worker-a", model_for(dataset, job_id))

    stored = load(sessions, job_id)
    assert stored.status == JOB_CANCELLED and stored.model_id is None
    assert count(sessions, Model) == 0


def test_fail_by_the_owner_records_the_error(sessions, new_job):
    job_id = new_job()
    claim(sessions, job_id, "worker-a", LEASE_SECONDS)

    assert fail(sessions, job_id, "worker-a", "out of memory")

    stored = load(sessions, job_id)
    assert stored.status == JOB_FAILED and stored.error == "out of memory"
    assert stored.finished_at is not None and stored.lease_owner is None


# ---------------------------------------------------------------- cancel and terminal states


def test_cancel_of_a_queued_job_cancels_it(sessions, new_job):
    job_id = new_job()

    with sessions() as session:
        assert cancel(session, job_id)

    stored = load(sessions, job_id)
    assert stored.status == JOB_CANCELLED and stored.finished_at is not None


def test_cancel_of_a_running_job_cancels_it_and_ends_the_lease(sessions, new_job):
    job_id = new_job()
    claim(sessions, job_id, "worker-a", LEASE_SECONDS)

    with sessions() as session:
        assert cancel(session, job_id)

    stored = load(sessions, job_id)
    assert stored.status == JOB_CANCELLED
    assert stored.lease_owner is None and stored.lease_expires_at is None
    assert not renew(sessions, job_id, "worker-a", LEASE_SECONDS)  # how the worker learns of it


def test_release_hands_a_running_job_back_queued_for_the_next_reconcile(sessions, new_job):
    job_id = new_job()
    mark_enqueued(sessions, job_id)
    claim(sessions, job_id, "worker-a", LEASE_SECONDS)

    assert not release(sessions, job_id, "worker-b")  # only the lease holder hands it back
    assert release(sessions, job_id, "worker-a")

    stored = load(sessions, job_id)
    assert stored.status == JOB_QUEUED and stored.error is None
    assert stored.lease_owner is None and stored.lease_expires_at is None
    assert stored.attempts == 0  # the attempt was handed back, not lost
    assert stored.enqueued_at is None  # so the next reconcile pass enqueues it at once
    assert not release(sessions, job_id, "worker-a")  # no longer running, nor anyone's
    enqueue = Enqueued()
    assert reconcile(sessions, enqueue, requeue_after_seconds=REQUEUE_AFTER) == [job_id]
    assert claim(sessions, job_id, "worker-b", LEASE_SECONDS).attempts == 1


def test_handed_back_attempts_do_not_count_towards_max_attempts(sessions, new_job):
    job_id = new_job()
    for worker in ["worker-a", "worker-b", "worker-c", "worker-d"]:
        assert claim(sessions, job_id, worker, LEASE_SECONDS) is not None
        assert release(sessions, job_id, worker)  # four restarts of the server mid-training
    assert claim(sessions, job_id, "worker-e", LEASE_SECONDS) is not None
    expire_lease(sessions, job_id)  # and then a worker that died
    assert reconcile(sessions, Enqueued(), requeue_after_seconds=REQUEUE_AFTER, max_attempts=3)
    assert load(sessions, job_id).status == JOB_QUEUED


def test_release_writes_only_progress_fields(sessions, new_job):
    job_id = new_job()
    claim(sessions, job_id, "worker-a", LEASE_SECONDS)
    with pytest.raises(ValueError, match="release writes only"):
        release(sessions, job_id, "worker-a", status="succeeded")
    assert load(sessions, job_id).status == JOB_RUNNING  # nothing written
    assert release(sessions, job_id, "worker-a", epoch=0)
    assert load(sessions, job_id).epoch == 0


def test_release_refuses_a_cancelled_job(sessions, new_job):
    job_id = new_job()
    claim(sessions, job_id, "worker-a", LEASE_SECONDS)
    with sessions() as session:
        assert cancel(session, job_id)
    assert not release(sessions, job_id, "worker-a")
    assert load(sessions, job_id).status == JOB_CANCELLED


def make_terminal(sessions, dataset, job_id: str, status: str) -> None:
    """Bring a job to `status` the way the service does."""
    if status == JOB_CANCELLED:
        with sessions() as session:
            assert cancel(session, job_id)
        return
    assert claim(sessions, job_id, "worker-a", LEASE_SECONDS) is not None
    if status == JOB_SUCCEEDED:
        assert finish(sessions, job_id, "worker-a", model_for(dataset, job_id))
    else:
        assert fail(sessions, job_id, "worker-a", "boom")


TERMINAL = [JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED]


@pytest.mark.parametrize("status", TERMINAL)
def test_cancel_of_a_terminal_job_is_refused_and_changes_nothing(
    sessions, dataset, new_job, status
):
    job_id = new_job()
    make_terminal(sessions, dataset, job_id, status)
    before = load(sessions, job_id)

    with sessions() as session:
        assert not cancel(session, job_id)

    after = load(sessions, job_id)
    assert after.status == status
    assert after.finished_at == before.finished_at


@pytest.mark.parametrize("status", TERMINAL)
def test_no_transition_leaves_a_terminal_state(sessions, dataset, new_job, status):
    job_id = new_job()
    make_terminal(sessions, dataset, job_id, status)
    before = load(sessions, job_id)
    models_before = count(sessions, Model)

    for owner in ("worker-a", "worker-b"):
        assert claim(sessions, job_id, owner, LEASE_SECONDS) is None
        assert not renew(sessions, job_id, owner, LEASE_SECONDS, epoch=7)
        assert not fail(sessions, job_id, owner, "late failure")
        assert not finish(sessions, job_id, owner, model_for(dataset, job_id))

    after = load(sessions, job_id)
    assert after.status == status
    assert after.attempts == before.attempts
    assert after.epoch == before.epoch
    assert after.error == before.error
    assert after.model_id == before.model_id
    assert after.finished_at == before.finished_at
    assert after.lease_owner is None and after.lease_expires_at is None
    assert count(sessions, Model) == models_before


# ---------------------------------------------------------------- reconcile

REQUEUE_AFTER = 300.0


class Enqueued(list):
    """Stands in for the broker: records the ids reconcile sends."""

    def __call__(self, job_id: str) -> None:
        self.append(job_id)


def test_reconcile_requeues_a_running_job_whose_lease_ran_out(sessions, new_job):
    job_id = new_job()
    mark_enqueued(sessions, job_id)
    claim(sessions, job_id, "worker-a", LEASE_SECONDS)
    expire_lease(sessions, job_id)
    enqueue = Enqueued()
    before = utcnow()

    requeued = reconcile(sessions, enqueue, requeue_after_seconds=REQUEUE_AFTER)

    assert requeued == [job_id]
    assert enqueue == [job_id]
    stored = load(sessions, job_id)
    assert stored.status == JOB_QUEUED
    assert stored.lease_owner is None and stored.lease_expires_at is None
    assert stored.enqueued_at >= before
    assert claim(sessions, job_id, "worker-b", LEASE_SECONDS) is not None


def test_reconcile_fails_a_job_whose_worker_died_max_attempts_times(sessions, new_job):
    job_id = new_job()
    for attempt, worker in enumerate(["worker-a", "worker-b", "worker-c"], start=1):
        assert claim(sessions, job_id, worker, LEASE_SECONDS) is not None
        expire_lease(sessions, job_id)  # the worker was killed
        enqueue = Enqueued()
        requeued = reconcile(sessions, enqueue, requeue_after_seconds=REQUEUE_AFTER, max_attempts=3)
        if attempt < 3:
            assert requeued == [job_id] and load(sessions, job_id).status == JOB_QUEUED
    assert requeued == [] and enqueue == []
    stored = load(sessions, job_id)
    assert stored.status == JOB_FAILED and stored.attempts == 3
    assert "stopped answering 3 times" in stored.error
    assert stored.finished_at is not None and stored.lease_owner is None


def test_reconcile_leaves_a_running_job_with_a_live_lease(sessions, new_job):
    job_id = new_job()
    mark_enqueued(sessions, job_id)
    set_job(sessions, job_id, enqueued_at=utcnow() - timedelta(seconds=10 * REQUEUE_AFTER))
    claim(sessions, job_id, "worker-a", LEASE_SECONDS)
    before = load(sessions, job_id)
    enqueue = Enqueued()

    assert reconcile(sessions, enqueue, requeue_after_seconds=REQUEUE_AFTER) == []

    after = load(sessions, job_id)
    assert enqueue == []
    assert after.status == JOB_RUNNING and after.lease_owner == "worker-a"
    assert after.lease_expires_at == before.lease_expires_at


def test_reconcile_enqueues_a_queued_job_never_enqueued(sessions, new_job):
    job_id = new_job()
    enqueue = Enqueued()
    before = utcnow()

    assert reconcile(sessions, enqueue, requeue_after_seconds=REQUEUE_AFTER) == [job_id]

    assert enqueue == [job_id]
    stored = load(sessions, job_id)
    assert stored.status == JOB_QUEUED and stored.enqueued_at >= before


def test_reconcile_requeues_a_queued_job_enqueued_longer_ago_than_requeue_after(sessions, new_job):
    job_id = new_job()
    set_job(sessions, job_id, enqueued_at=utcnow() - timedelta(seconds=REQUEUE_AFTER + 5))
    enqueue = Enqueued()
    before = utcnow()

    assert reconcile(sessions, enqueue, requeue_after_seconds=REQUEUE_AFTER) == [job_id]

    assert enqueue == [job_id]
    assert load(sessions, job_id).enqueued_at >= before


def test_reconcile_leaves_a_recently_enqueued_queued_job(sessions, new_job):
    job_id = new_job()
    mark_enqueued(sessions, job_id)
    enqueued_at = load(sessions, job_id).enqueued_at
    enqueue = Enqueued()

    assert reconcile(sessions, enqueue, requeue_after_seconds=REQUEUE_AFTER) == []

    assert enqueue == []
    assert load(sessions, job_id).enqueued_at == enqueued_at


@pytest.mark.parametrize("status", TERMINAL)
def test_reconcile_leaves_terminal_jobs(sessions, dataset, new_job, status):
    job_id = new_job()  # never enqueued: only its status keeps it out
    make_terminal(sessions, dataset, job_id, status)
    before = load(sessions, job_id)
    enqueue = Enqueued()

    assert reconcile(sessions, enqueue, requeue_after_seconds=REQUEUE_AFTER) == []

    after = load(sessions, job_id)
    assert enqueue == []
    assert after.status == status and after.enqueued_at is None
    assert after.finished_at == before.finished_at


def test_reconcile_sends_each_lost_job_once_and_only_those(sessions, dataset, new_job):
    orphaned, live, never, stale, recent, done = (new_job() for _ in range(6))
    for job_id in (orphaned, live, recent):
        mark_enqueued(sessions, job_id)
    set_job(sessions, orphaned, enqueued_at=utcnow() - timedelta(seconds=2 * REQUEUE_AFTER))
    set_job(sessions, stale, enqueued_at=utcnow() - timedelta(seconds=2 * REQUEUE_AFTER))
    claim(sessions, orphaned, "worker-a", LEASE_SECONDS)
    expire_lease(sessions, orphaned)
    claim(sessions, live, "worker-b", LEASE_SECONDS)
    make_terminal(sessions, dataset, done, JOB_FAILED)
    enqueue = Enqueued()

    requeued = reconcile(sessions, enqueue, requeue_after_seconds=REQUEUE_AFTER)

    assert sorted(requeued) == sorted([orphaned, never, stale])
    assert sorted(enqueue) == sorted(requeued)  # the orphan, stale too, is sent only once


# ---------------------------------------------------------------- worker heartbeats


def beat(sessions, worker_id: str, current_job_id: str | None = None) -> None:
    beat_worker(
        sessions,
        worker_id,
        hostname="host-1",
        pid=4242,
        devices=["/physical_device:GPU:0"],
        current_job_id=current_job_id,
    )


def test_beat_worker_inserts_one_row_then_refreshes_it(sessions):
    beat(sessions, "host-1:4242:abc")
    with sessions.begin() as session:
        session.execute(
            update(Worker).values(last_seen=utcnow() - timedelta(hours=1), current_job_id=None)
        )
    before = utcnow()

    beat(sessions, "host-1:4242:abc", current_job_id="job-1")

    with sessions() as session:
        rows = session.scalars(select(Worker)).all()
    assert [(w.id, w.hostname, w.pid, w.devices) for w in rows] == [
        ("host-1:4242:abc", "host-1", 4242, ["/physical_device:GPU:0"])
    ]
    assert rows[0].last_seen >= before
    assert rows[0].current_job_id == "job-1"


def test_live_workers_leave_out_a_worker_not_seen_within_the_window(sessions):
    beat(sessions, "fresh")
    beat(sessions, "silent")
    with sessions.begin() as session:
        session.execute(
            update(Worker)
            .where(Worker.id == "silent")
            .values(last_seen=utcnow() - timedelta(seconds=120))
        )

    with sessions() as session:
        live = [worker.id for worker in live_workers(session, within_seconds=60)]
        everyone = [worker.id for worker in live_workers(session, within_seconds=600)]

    assert live == ["fresh"]
    assert sorted(everyone) == ["fresh", "silent"]


def test_processes_starting_together_on_a_new_database_all_get_its_schema(tmp_path):
    """`anyband serve` starts the API and its worker at once on a new SQLite file: both create
    the tables. The loser's CREATE failed ("table ... already exists", or "database is
    locked"), and the worker then ran with no heartbeat and no reconciler."""

    def start(url: str, together: threading.Barrier, errors: list) -> None:
        together.wait()
        try:
            sessions = init_db(url)
            with sessions() as session:
                session.execute(select(Job)).all()
        except Exception as exc:
            errors.append(exc)

    for trial in range(5):
        url, together, errors = f"sqlite:///{tmp_path / f'new{trial}.db'}", threading.Barrier(6), []
        threads = [threading.Thread(target=start, args=(url, together, errors)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []


def test_a_database_made_before_a_column_was_added_gains_it_in_place_and_keeps_its_rows(
    sessions,
):
    """An upgrade: anyband's Scene gained `warnings` after databases with scenes existed."""
    engine = sessions.kw["bind"]
    with sessions() as session:
        session.add(Scene(id="old", model_id="m", filename="s.tif", width=64, height=64, stride=32))
        session.commit()
    with engine.begin() as connection:  # the table as an older anyband made it
        connection.execute(text("ALTER TABLE scenes DROP COLUMN warnings"))
    url = engine.url.render_as_string(hide_password=False)
    engine.dispose()

    # Processes that start together on it (the API and its worker) all get the column.
    errors, together = [], threading.Barrier(4)

    def start() -> None:
        together.wait()
        try:
            create_schema(make_engine(url))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    upgraded = init_db(url)
    with upgraded() as session:
        old = session.get(Scene, "old")
        assert (old.filename, old.warnings) == ("s.tif", None)  # kept, with nothing to say
        old.warnings = ["a warning"]
        session.commit()
    with upgraded() as session:
        assert session.get(Scene, "old").warnings == ["a warning"]
    assert add_missing_columns(upgraded.kw["bind"]) == []  # nothing more to add
    upgraded.kw["bind"].dispose()
