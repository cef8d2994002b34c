"""Request and response bodies, named by role (DatasetPublic, DatasetsPublic, ...)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


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
