"""Datasets: upload a zip of <class>/<tile>.tif, list, show, delete."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from anyband.datasets import DatasetLimits, ingest_dataset_zip
from anyband.errors import InvalidDatasetError, InvalidRasterError
from anyband.paths import dataset_dir
from anyband.store import DATASET_READY, Dataset, Job, new_id
from service.deps import (
    Limit,
    Offset,
    SessionDep,
    SettingsDep,
    in_use_by,
    newest_first,
    remove,
    require_api_key,
)
from service.problems import PROBLEM_RESPONSES, Problem
from service.schemas import DatasetPublic, DatasetsPublic
from service.uploads import multipart_body, receive_multipart

router = APIRouter(
    prefix="/v1/datasets",
    tags=["datasets"],
    dependencies=[Depends(require_api_key)],
    responses=PROBLEM_RESPONSES,
)

UPLOAD_BODY = multipart_body(
    "zip of <class>/<tile>.tif (one optional top folder)",
    name={"type": "string", "description": "defaults to the zip's name"},
)


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    operation_id="create_dataset",
    openapi_extra=UPLOAD_BODY,
)
async def create_dataset(request: Request, settings: SettingsDep, session: SessionDep):
    upload = await receive_multipart(
        request, settings.data_dir / "uploads", settings.max_upload_bytes
    )
    try:
        archive = upload.file("file")
        name = (upload.fields.get("name") or Path(archive.filename).stem or "dataset")[:200]
        dataset_id = new_id()
        target = dataset_dir(settings.data_dir, dataset_id)
        target.mkdir(parents=True)
        limits = DatasetLimits.from_settings(settings)
        try:
            summary = await run_in_threadpool(ingest_dataset_zip, archive.path, target, limits)
        except (InvalidDatasetError, InvalidRasterError) as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise Problem(422, f"dataset refused: {exc}") from exc
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
    finally:
        upload.remove()

    dataset = Dataset(
        id=dataset_id,
        name=name,
        status=DATASET_READY,
        num_tiles=summary.num_tiles,
        num_bands=summary.num_bands,
        dtype=summary.dtype,
        tile_height=summary.tile_size[0],
        tile_width=summary.tile_size[1],
        classes=summary.classes,
        class_counts=summary.class_counts,
        band_stats=summary.band_stats,
        nodata=summary.nodata,
    )
    session.add(dataset)
    session.commit()
    return dataset


@router.get("", response_model=DatasetsPublic, operation_id="list_datasets")
def list_datasets(session: SessionDep, offset: Offset = 0, limit: Limit = 100):
    rows, count = newest_first(session, Dataset, offset, limit)
    return DatasetsPublic(data=rows, count=count)


@router.get("/{dataset_id}", response_model=DatasetPublic, operation_id="get_dataset")
def get_dataset(dataset_id: str, session: SessionDep):
    return _get_or_404(session, dataset_id)


@router.delete("/{dataset_id}", status_code=204, operation_id="delete_dataset")
def delete_dataset(dataset_id: str, session: SessionDep, settings: SettingsDep):
    dataset = _get_or_404(session, dataset_id)
    in_use_by(session, Job, f"dataset '{dataset_id}'", dataset_id=dataset_id)
    return remove(session, dataset, dataset_dir(settings.data_dir, dataset_id))


def _get_or_404(session, dataset_id: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise Problem(404, f"no dataset with id '{dataset_id}'")
    return dataset
