"""Records in the database (SQLite by default, PostgreSQL by URL) through SQLAlchemy 2."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

DATASET_READY = "ready"
DATASET_FAILED = "failed"
DATASET_STATUSES = (DATASET_READY, DATASET_FAILED)

JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_SUCCEEDED = "succeeded"
JOB_FAILED = "failed"
JOB_CANCELLED = "cancelled"
JOB_STATUSES = (JOB_QUEUED, JOB_RUNNING, JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED)
JOB_ACTIVE = (JOB_QUEUED, JOB_RUNNING)
JOB_TERMINAL = (JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED)


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC on every database (SQLite drops the zone; this puts it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=DATASET_READY)
    num_tiles: Mapped[int] = mapped_column(Integer)
    num_bands: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))
    tile_height: Mapped[int] = mapped_column(Integer)
    tile_width: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list] = mapped_column(JSON)
    class_counts: Mapped[dict] = mapped_column(JSON)
    band_stats: Mapped[dict] = mapped_column(JSON)
    nodata: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def tile_size(self) -> list[int]:
        return [self.tile_height, self.tile_width]


class WeightsFile(Base):
    __tablename__ = "weights"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(String(300))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    dataset_id: Mapped[str] = mapped_column(String(32), index=True)
    spec: Mapped[dict] = mapped_column(JSON)  # the full, defaults-filled job spec
    spec_sha256: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=JOB_QUEUED, index=True)
    epoch: Mapped[int] = mapped_column(Integer, default=0)  # epochs completed
    epochs: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the latest epoch's
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The lease: which worker trains it and until when; renewed while it trains.
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # times a worker took it up
    resumed_from_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Model(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(String(32), unique=True)  # one model per job, ever
    dataset_id: Mapped[str] = mapped_column(String(32), index=True)
    classes: Mapped[list] = mapped_column(JSON)
    bands: Mapped[list] = mapped_column(JSON)  # 1-based dataset bands, in model order
    dataset_bands: Mapped[int] = mapped_column(Integer)  # what a tile must carry
    channels: Mapped[int] = mapped_column(Integer)
    init_strategy: Mapped[str] = mapped_column(String(16))
    weights: Mapped[str] = mapped_column(String(64))
    tile_height: Mapped[int] = mapped_column(Integer)
    tile_width: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))
    nodata: Mapped[float | None] = mapped_column(Float, nullable=True)
    metrics: Mapped[dict] = mapped_column(JSON)  # accuracy, macro_f1, val samples
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def tile_size(self) -> list[int]:
        return [self.tile_height, self.tile_width]


class Scene(Base):
    """A whole-scene class map: a GeoTIFF in, a class and probability GeoTIFF out (a worker task
    with the same lease rules as a training job)."""

    __tablename__ = "scenes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(String(32), index=True)
    filename: Mapped[str] = mapped_column(String(300))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    stride: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=JOB_QUEUED, index=True)
    windows_done: Mapped[int] = mapped_column(Integer, default=0)
    windows_total: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # What suggests the scene is not in the training data's units (added after the first
    # release: nullable, so that older databases gain it in place; see create_schema).
    warnings: Mapped[list | None] = mapped_column(JSON, nullable=True)


class Worker(Base):
    """A worker's heartbeat: /healthz counts the live ones whatever the broker."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # hostname:pid:random
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    devices: Mapped[list] = mapped_column(JSON)
    current_job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record):
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # API and worker processes share the file
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def init_db(url: str) -> sessionmaker:
    """Create the schema if missing and return a session factory."""
    engine = make_engine(url)
    create_schema(engine)
    return sessionmaker(engine, expire_on_commit=False)


def create_schema(engine: Engine, attempts: int = 10) -> None:
    """The tables that are missing. Processes that start together on a new database race here
    (`anyband serve`: the API and its worker): both find a table missing, one creates it, and
    the other's CREATE fails with "already exists" (PostgreSQL: a duplicate key in its
    catalog; SQLite may also answer "database is locked" to the second writer at once). The
    worker then ran without its heartbeat and reconciler. Trying again settles it: the next
    check sees the tables the other process made.

    A database an older anyband made gains the columns added since, in place, so that an
    upgrade keeps every row (see `add_missing_columns`)."""
    for attempt in range(1, attempts + 1):
        try:
            Base.metadata.create_all(engine)
            add_missing_columns(engine)
            return
        except DatabaseError as exc:  # OperationalError, ProgrammingError, IntegrityError
            reason = str(exc.orig).lower()
            racing = ("already exists", "duplicate", "database is locked")
            if attempt == attempts or not any(words in reason for words in racing):
                raise
            time.sleep(0.05 * attempt)


def add_missing_columns(engine: Engine) -> list[str]:
    """`ALTER TABLE ... ADD COLUMN` for each column of a table that the database's copy of the
    table lacks (it was made by an older anyband); returns them as "table.column". Columns
    added after a release are nullable, so rows already there simply hold NULL; one that is
    not could not be added to them, and is refused with what to do."""
    inspector = inspect(engine)
    quote = engine.dialect.identifier_preparer.quote
    added = []
    for table in Base.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(
                    f"the database's table {table.name} lacks the column {column.name}, which "
                    "cannot be added to the rows already there (NOT NULL); migrate it by hand"
                )
            kind = column.type.compile(dialect=engine.dialect)
            with engine.begin() as connection:
                connection.execute(
                    text(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {kind}")
                )
            added.append(f"{table.name}.{column.name}")
    return added
