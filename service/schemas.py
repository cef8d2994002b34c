"""Request and response bodies, named by role (DatasetPublic, DatasetsPublic, ...)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator

from anyband.artifacts import ARTIFACT_NAMES
from anyband.jobspec import JobSpec
from anyband.store import Job, Scene


def _columns(schema: type[BaseModel], row) -> dict:
    """The row's attributes the schema shares by name; the rest each schema derives itself."""
    return {name: getattr(row, name) for name in schema.model_fields if hasattr(row, name)}


class BandStats(BaseModel):
    mean: list[float]
    std: list[float]


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    status: str
    num_tiles: int
    num_bands: int
    dtype: str
    tile_size: list[int]
    classes: list[str]
    class_counts: dict[str, int]
    band_stats: BandStats
    nodata: float | None
    created_at: datetime


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


class WeightsPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    filename: str
    size_bytes: int
    sha256: str
    created_at: datetime


class WeightsListPublic(BaseModel):
    data: list[WeightsPublic]
    count: int


class Health(BaseModel):
    status: str
    database: str
    broker: str
    workers: int = Field(description="workers that reported in the last minute")


class JobProgress(BaseModel):
    epoch: int = Field(description="epochs completed")
    epochs: int
    metrics: dict[str, float | str] | None = Field(description="the latest epoch's metrics")


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    dataset_id: str
    status: str
    spec: JobSpec
    progress: JobProgress
    error: str | None
    model_id: str | None
    attempts: int = Field(description="times a worker took the job up (more after a worker died)")
    resumed_from_epoch: int | None = Field(description="the checkpoint a resumed job started from")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @model_validator(mode="before")
    @classmethod
    def _progress_from_row(cls, data):
        if isinstance(data, Job):
            return {
                **_columns(cls, data),
                "progress": {"epoch": data.epoch, "epochs": data.epochs, "metrics": data.metrics},
            }
        return data


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class ModelPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    job_id: str
    dataset_id: str
    classes: list[str]
    bands: list[int] = Field(description="1-based dataset bands the model reads, in order")
    dataset_bands: int = Field(description="bands a tile must carry")
    channels: int
    init_strategy: str
    weights: str
    tile_size: list[int]
    dtype: str
    nodata: float | None
    metrics: dict
    sha256: str
    size_bytes: int
    artifacts: list[str] = list(ARTIFACT_NAMES)
    created_at: datetime


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class Prediction(BaseModel):
    filename: str
    label: str
    probabilities: dict[str, float]
    valid_fraction: float = Field(
        description="share of the tile's pixels valid in every band the model reads; the rest "
        "(nodata, NaN) were set to the band mean, so a low value means the answer rests on "
        "little data, and 0 on none"
    )
    warnings: list[str] = Field(
        default=[],
        description="what suggests the tile is not in the training data's units: a pixel type "
        "other than the training data's, or a band whose mean lies more than 6 training "
        "standard deviations from the training mean; the answer is given all the same",
    )


class PredictionsPublic(BaseModel):
    model_id: str
    predictions: list[Prediction] = Field(description="one per uploaded tile, in request order")


class SceneProgress(BaseModel):
    windows_done: int
    windows_total: int
    fraction: float


class ScenePublic(BaseModel):
    id: str
    model_id: str
    filename: str
    width: int
    height: int
    stride: int
    status: str
    progress: SceneProgress
    error: str | None
    warnings: list[str] = Field(
        default=[],
        description="what suggests the scene is not in the training data's units: a pixel type "
        "other than the training data's (known at submission), or a band whose mean over the "
        "valid pixels lies more than 6 training standard deviations from the training mean "
        "(known once mapped); the scene is mapped all the same",
    )
    result: str | None = Field(description="where to download the class map once succeeded")
    preview: str | None = Field(
        description="where to see the class map as a PNG, with each class's share, once succeeded"
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, data):
        if isinstance(data, Scene):
            total = data.windows_total or 0
            return {
                **_columns(cls, data),
                "warnings": data.warnings or [],
                "progress": {
                    "windows_done": data.windows_done,
                    "windows_total": total,
                    "fraction": data.windows_done / total if total else 0.0,
                },
                **{
                    link: f"/v1/scenes/{data.id}/{name}" if data.status == "succeeded" else None
                    for link, name in (("result", "result.tif"), ("preview", "preview.png"))
                },
            }
        return data


class ScenesPublic(BaseModel):
    data: list[ScenePublic]
    count: int
