"""Exceptions raised by the anyband library; each subclasses the built-in a caller would expect."""


class AnybandError(Exception):
    """Base class for every error anyband raises on purpose."""


class WeightsNotFoundError(AnybandError, FileNotFoundError):
    """Pretrained weights are not on this machine and may not be downloaded."""


class InvalidWeightsError(AnybandError, ValueError):
    """A weights file exists but is not the 3-band ResNet50 it claims to be."""


class InvalidDatasetError(AnybandError, ValueError):
    """An upload or tile that is not a valid dataset; the message says what and what is expected."""


class InvalidRasterError(AnybandError, ValueError):
    """A file that is not a safe, readable GeoTIFF within the size budget."""


class DatasetNotFoundError(AnybandError, FileNotFoundError):
    """A folder holds no ingested dataset (no dataset.json, tiles.npy or labels.npy)."""


class InvalidJobSpecError(AnybandError, ValueError):
    """A job spec that does not fit its dataset or weights; `errors` names each field."""

    def __init__(self, errors: list[dict]):
        self.errors = errors  # [{"field": "bands", "message": "..."}]
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))


class JobCancelled(AnybandError):
    """The job was cancelled (or its lease taken over) while it trained; nothing is published."""


class IdempotencyConflict(AnybandError):
    """The Idempotency-Key was used before with a different spec."""

    def __init__(self, key: str, job_id: str):
        self.job_id = job_id
        super().__init__(
            f"Idempotency-Key '{key}' was used for job '{job_id}' with a different spec; "
            "send a new key for a new job"
        )


class ModelFileMismatchError(AnybandError, ValueError):
    """A stored model file whose sha256 is not the one recorded when its job published it."""
