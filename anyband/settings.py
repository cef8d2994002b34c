"""Settings read from the environment (prefix ANYBAND_), defined once for library, service and worker."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MB = 2**20
GB = 2**30


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ANYBAND_", extra="ignore")

    # Storage: datasets/, jobs/, models/, weights/ and the SQLite database live here.
    data_dir: Path = Path("./anyband-data")
    # Empty: SQLite at {data_dir}/anyband.db. Else any SQLAlchemy URL, e.g.
    # postgresql+psycopg://user:pass@host/db
    database_url: str = ""
    # Comma-separated bearer keys. Empty: auth off and the API binds to 127.0.0.1 only.
    api_keys: str = ""

    # Uploads (bytes). Headers lie, so every limit is counted on the bytes actually read.
    max_upload_bytes: int = Field(default=4 * GB, gt=0)
    max_weights_bytes: int = Field(default=512 * MB, gt=0)
    max_zip_entries: int = Field(default=50_000, gt=0)
    max_dataset_bytes: int = Field(default=16 * GB, gt=0)  # uncompressed, whole zip
    max_entry_bytes: int = Field(default=512 * MB, gt=0)  # one file inside the zip
    max_compression_ratio: float = Field(default=100.0, gt=1)
    max_tile_bytes: int = Field(default=256 * MB, gt=0)  # width*height*bands*itemsize
    max_cache_bytes: int = Field(default=32 * GB, gt=0)  # the float32 training cache on disk

    # Celery broker. Empty: Celery's filesystem transport in {data_dir}/broker (one machine, no
    # Redis). For many workers: redis://host:6379/0
    broker_url: str = ""
    # Redis hands an unacked message back after this long; it must exceed the longest job.
    broker_visibility_timeout: int = Field(default=7 * 24 * 3600, gt=0)
    # A worker renews its lease on a running job every lease_seconds / 4; a job whose lease ran
    # out (its worker died) is re-enqueued by the reconciler and resumes from its checkpoint.
    lease_seconds: float = Field(default=60.0, gt=0)
    # A job whose worker died this many times is failed rather than taken up again: a job that
    # kills its worker (out of memory, a driver crash) must not take down worker after worker.
    max_attempts: int = Field(default=3, ge=1)
    # How often each worker reconciles the job table with the broker.
    reconcile_seconds: float = Field(default=30.0, gt=0)
    # A queued job not claimed this long after it was enqueued is enqueued again (a duplicate
    # message is harmless: the job row decides, and a done or leased job is skipped).
    requeue_after_seconds: float = Field(default=600.0, gt=0)

    # Serving: trained models kept loaded (LRU), and micro-batching of concurrent predictions.
    model_cache_size: int = Field(default=4, ge=1)
    # Serve (predict and scenes) a copy of each model with its BatchNormalizations folded into
    # the convolutions before them: the same answers to float32 rounding, about 8-16% faster
    # on a CPU (bench/README.md). False serves the model as saved.
    fold_batch_norm: bool = True
    predict_max_batch: int = Field(default=32, ge=1)
    predict_batch_wait_ms: float = Field(default=2.0, ge=0)
    # ...and up to this long for requests the API is already receiving or reading (never for
    # ones it has not seen), so that under load a batch does not leave half empty.
    predict_batch_hold_ms: float = Field(default=50.0, ge=0)
    # Batches of one model that may run at once (TensorFlow Serving's num_batch_threads): the
    # next batch's tiles are read, and copied to the device, while the last one computes. 1 on
    # a CPU, where the batches would share the cores the model already uses (bench/README.md).
    predict_batch_concurrency: int = Field(default=1, ge=1)
    max_predict_files: int = Field(default=256, ge=1)  # tiles in one predict request
    # The decoded pixels of one predict request, as read plus as float32 for the model (413).
    max_predict_bytes: int = Field(default=1 * GB, gt=0)
    # The same plus the bodies parsed in memory, summed over every predict request in flight:
    # beyond it a request is answered 503 with Retry-After, before its body is read or its
    # pixels are decoded, rather than the API running out of memory under many concurrent
    # requests. At least max_predict_bytes + predict_in_memory_bytes.
    max_predict_inflight_bytes: int = Field(default=4 * GB, gt=0)
    # Predict bodies up to this size are parsed in memory; larger ones stream to disk first.
    predict_in_memory_bytes: int = Field(default=64 * MB, ge=0)
    # A scene is read window by window, so its budget is far above one tile's.
    max_scene_bytes: int = Field(default=64 * GB, gt=0)

    # Pretrained weights: an explicit path wins over Keras' cache folders.
    imagenet_weights: Path | None = None
    # Off by default: a GPU box behind a firewall should fail fast with instructions, not hang.
    allow_downloads: bool = False

    @model_validator(mode="after")
    def _one_request_fits_the_server(self) -> Settings:
        one_request = self.max_predict_bytes + self.predict_in_memory_bytes
        if self.max_predict_inflight_bytes < one_request:
            raise ValueError(
                "ANYBAND_MAX_PREDICT_INFLIGHT_BYTES must be at least ANYBAND_MAX_PREDICT_BYTES + "
                "ANYBAND_PREDICT_IN_MEMORY_BYTES, or a request within its own limits could never "
                f"be answered. Received: max_predict_inflight_bytes="
                f"{self.max_predict_inflight_bytes}, max_predict_bytes={self.max_predict_bytes}, "
                f"predict_in_memory_bytes={self.predict_in_memory_bytes}"
            )
        return self

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir.resolve() / "broker"

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'anyband.db'}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
