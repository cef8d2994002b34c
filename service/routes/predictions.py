"""Inference on uploaded tiles: POST /v1/models/{id}/predict, micro-batched across requests."""

from __future__ import annotations

import asyncio
from functools import partial

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from anyband.errors import InvalidRasterError, ModelFileMismatchError
from anyband.inference import ModelInput, check_raster, prepare
from anyband.rasters import RasterInfo, declared_bytes, format_bytes, read_tile
from anyband.serving import ServedModel
from anyband.settings import Settings
from service.deps import SettingsDep, require_api_key
from service.problems import PROBLEM_RESPONSES, Problem
from service.routes.models import get_or_404
from service.schemas import PredictionsPublic
from service.uploads import UploadedFile, multipart_body, receive_multipart

router = APIRouter(
    prefix="/v1/models",
    tags=["inference"],
    dependencies=[Depends(require_api_key)],
    responses=PROBLEM_RESPONSES,
)


@router.post(
    "/{model_id}/predict",
    response_model=PredictionsPublic,
    operation_id="predict",
    openapi_extra=multipart_body(
        "GeoTIFF tiles with the dataset's band count, any size >= 32 px",
        file_field="files",
        many=True,
    ),
)
async def predict(model_id: str, request: Request, settings: SettingsDep):
    serving = request.app.state.serving
    served = serving.loaded(model_id) or await _load(request, model_id)
    batcher = await serving.batcher(served)
    with batcher.expecting():  # a batch forming meanwhile waits for these tiles
        upload = await receive_multipart(
            request,
            settings.data_dir / "uploads",
            settings.max_upload_bytes,
            in_memory_up_to=settings.predict_in_memory_bytes,
            hash_files=False,
        )
        try:
            files = upload.files_named("files")
            if len(files) > settings.max_predict_files:
                raise Problem(
                    413,
                    f"{len(files)} tiles in one request; send at most {settings.max_predict_files}",
                )
            tiles = await run_in_threadpool(_read_tiles, files, served.model_input, settings)
        finally:
            upload.remove()
        answers = [batcher.enqueue(tile[np.newaxis]) for tile in tiles]
    probabilities = await asyncio.gather(*answers)
    return {
        "model_id": model_id,
        "predictions": [
            {
                "filename": uploaded.filename,
                "label": served.classes[int(np.argmax(p[0]))],
                "probabilities": dict(zip(served.classes, p[0].tolist(), strict=True)),
            }
            for uploaded, p in zip(files, probabilities, strict=True)
        ],
    }


async def _load(request: Request, model_id: str) -> ServedModel:
    # A short session, not one per request: requests wait for a batch, not for a connection.
    with request.app.state.sessions() as session:
        record = get_or_404(session, model_id)
    try:
        return await request.app.state.serving.model(record)
    except (ModelFileMismatchError, FileNotFoundError) as exc:
        raise Problem(409, f"model '{model_id}' cannot be served: {exc}") from exc


def _read_tiles(
    files: list[UploadedFile], model_input: ModelInput, settings: Settings
) -> list[np.ndarray]:
    """Each tile checked as untrusted and against the model, then made ready for it. The
    request's pixels, as read and as the model's float32, must fit `max_predict_bytes`: checked
    from each header before its pixels are decoded (a small body can declare huge tiles)."""
    tiles, decoded = [], 0

    def check(info: RasterInfo, name: str) -> None:
        nonlocal decoded
        check_raster(info, model_input, name)
        for_model = declared_bytes(info.width, info.height, len(model_input.bands), "float32")
        decoded += info.nbytes + for_model
        if decoded > settings.max_predict_bytes:
            raise Problem(
                413,
                f"the tiles of this request up to {name!r} decode to {format_bytes(decoded)} "
                f"(as read, plus float32 for the model), over the "
                f"{format_bytes(settings.max_predict_bytes)} one predict request may hold; "
                f"send them in several requests",
            )

    for uploaded in files:
        try:
            pixels, info = read_tile(
                uploaded.source,
                max_bytes=settings.max_tile_bytes,
                name=uploaded.filename,
                georeferencing=False,  # a tile's class needs its pixels, not where they are
                before_read=partial(check, name=uploaded.filename),
            )
        except InvalidRasterError as exc:
            raise Problem(
                422,
                str(exc),
                errors=[{"field": "files", "message": str(exc), "filename": uploaded.filename}],
            ) from exc
        tiles.append(prepare(pixels, model_input, info.nodata))
    return tiles
