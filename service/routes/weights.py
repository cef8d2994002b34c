"""Weights: upload a user's 3-band ResNet50 weights (checked by loading them), list, delete."""

from __future__ import annotations

import shutil

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select

from anyband.errors import InvalidWeightsError
from anyband.paths import weights_path
from anyband.pretrained import WEIGHTS_SUFFIXES, check_resnet50_weights
from anyband.store import Job, WeightsFile, new_id
from service.deps import SessionDep, SettingsDep, in_use_by, remove, require_api_key
from service.problems import PROBLEM_RESPONSES, Problem
from service.schemas import WeightsListPublic, WeightsPublic
from service.uploads import multipart_body, receive_multipart

router = APIRouter(
    prefix="/v1/weights",
    tags=["weights"],
    dependencies=[Depends(require_api_key)],
    responses=PROBLEM_RESPONSES,
)

UPLOAD_BODY = multipart_body(
    "3-band ResNet50 weights: .weights.h5 or Keras notop .h5",
    name={"type": "string"},
)


@router.post(
    "",
    status_code=201,
    response_model=WeightsPublic,
    operation_id="create_weights",
    openapi_extra=UPLOAD_BODY,
)
async def create_weights(request: Request, settings: SettingsDep, session: SessionDep):
    upload = await receive_multipart(
        request, settings.data_dir / "uploads", settings.max_weights_bytes
    )
    try:
        uploaded = upload.file("file")
        if not uploaded.filename.endswith(WEIGHTS_SUFFIXES):
            raise Problem(
                422,
                f"weights file '{uploaded.filename}' must end in .weights.h5 (Keras 3 "
                "save_weights) or .h5 (Keras' notop layout)",
            )
        weights_id = new_id()
        target = weights_path(settings.data_dir, weights_id, uploaded.filename)
        target.parent.mkdir(parents=True)
        shutil.move(uploaded.path, target)
        try:
            await run_in_threadpool(check_resnet50_weights, target, uploaded.filename)
        except BaseException as exc:  # refused or not, nothing of it is kept
            shutil.rmtree(target.parent, ignore_errors=True)
            if isinstance(exc, InvalidWeightsError):
                raise Problem(422, str(exc)) from exc
            raise
    finally:
        upload.remove()

    record = WeightsFile(
        id=weights_id,
        name=(upload.fields.get("name") or uploaded.filename)[:200],
        filename=uploaded.filename[:300],
        size_bytes=uploaded.size,
        sha256=uploaded.sha256,
    )
    session.add(record)
    session.commit()
    return record


@router.get("", response_model=WeightsListPublic, operation_id="list_weights")
def list_weights(session: SessionDep):
    rows = session.scalars(select(WeightsFile).order_by(WeightsFile.created_at.desc())).all()
    count = session.scalar(select(func.count()).select_from(WeightsFile))
    return WeightsListPublic(data=rows, count=count)


@router.delete("/{weights_id}", status_code=204, operation_id="delete_weights")
def delete_weights(weights_id: str, session: SessionDep, settings: SettingsDep):
    """The record and its file. Models trained from them keep what they learned."""
    record = session.get(WeightsFile, weights_id)
    if record is None:
        raise Problem(404, f"no weights with id '{weights_id}'")

    def uses(job: Job) -> bool:
        return job.spec.get("weights") == weights_id

    in_use_by(session, Job, f"weights '{weights_id}'", matches=uses)
    return remove(
        session, record, weights_path(settings.data_dir, weights_id, record.filename).parent
    )
