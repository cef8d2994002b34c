"""Inference on uploaded tiles: POST /v1/models/{id}/predict, micro-batched across requests."""

from __future__ import annotations

import asyncio
from functools import partial

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from anyband.artifacts import why_unusable
from anyband.errors import InvalidRasterError, ModelFileMismatchError
from anyband.inference import ModelInput, check_raster, input_warnings, prepare_tile
from anyband.rasters import RasterInfo, declared_bytes, format_bytes, read_tile
from anyband.serving import Reservation, ServedModel
from anyband.settings import Settings
from service.deps import SettingsDep, require_api_key
from service.problems import PROBLEM_JSON, PROBLEM_RESPONSES, Problem
from service.routes.models import get_or_404
from service.schemas import PredictionsPublic
from service.uploads import UploadedFile, multipart_body, receive_multipart

# What a 503 for a full predict memory budget advises: requests in flight finish in well under
# a second of model time each, so a second later the budget has usually room again.
RETRY_AFTER_SECONDS = 1

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
    responses={
        503: {
            "description": "Service Unavailable: the requests in flight hold the memory budget "
            "(ANYBAND_MAX_PREDICT_INFLIGHT_BYTES); retry after the Retry-After header's seconds",
            "content": {PROBLEM_JSON: {}},
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        }
    },
    openapi_extra=multipart_body(
        "GeoTIFF tiles with the dataset's band count, any size >= 32 px",
        file_field="files",
        many=True,
    ),
)
async def predict(model_id: str, request: Request, settings: SettingsDep):
    serving = request.app.state.serving
    served = serving.loaded(model_id) or await _load(request, model_id)
    batcher = serving.batcher(served)
    # The request's body (if parsed in memory) and pixels count against what all requests in
    # flight may hold, until it is answered.
    with serving.memory.reservation() as held:
        with batcher.expecting():  # a batch forming meanwhile waits for these tiles
            upload = await receive_multipart(
                request,
                settings.data_dir / "uploads",
                settings.max_upload_bytes,
                in_memory_up_to=settings.predict_in_memory_bytes,
                hash_files=False,
                before_in_memory=partial(_hold_body, held),
            )
            try:
                files = upload.files_named("files")
                if len(files) > settings.max_predict_files:
                    raise Problem(
                        413,
                        f"{len(files)} tiles in one request; "
                        f"send at most {settings.max_predict_files}",
                    )
                tiles = await run_in_threadpool(
                    _read_tiles, files, served.model_input, settings, held
                )
            finally:
                upload.remove()
            answers = [batcher.enqueue(tile[np.newaxis]) for tile, _, _ in tiles]
        probabilities = await asyncio.gather(*answers)
    return {
        "model_id": model_id,
        "predictions": [
            {
                "filename": uploaded.filename,
                "label": served.classes[int(np.argmax(p[0]))],
                "probabilities": dict(zip(served.classes, p[0].tolist(), strict=True)),
                "valid_fraction": valid,
                "warnings": warnings,
            }
            for uploaded, (_, valid, warnings), p in zip(files, tiles, probabilities, strict=True)
        ],
    }


async def _load(request: Request, model_id: str) -> ServedModel:
    # A short session, not one per request: requests wait for a batch, not for a connection.
    with request.app.state.sessions() as session:
        record = get_or_404(session, model_id)
    try:
        return await request.app.state.serving.model(record)
    except (ModelFileMismatchError, FileNotFoundError) as exc:
        raise Problem(409, f"model '{model_id}' cannot be served: {why_unusable(exc)}") from exc


def _hold_body(held: Reservation, content_length: int) -> None:
    """A body parsed in memory counts against the budget too, before a byte of it is read."""
    if not held.add(content_length):
        raise _busy(held, "this request's body (parsed in memory)", content_length)


def _busy(held: Reservation, what: str, needed: int) -> Problem:
    return Problem(
        503,
        f"the server is busy: predict requests in flight hold {format_bytes(held.budget.held)} "
        f"of the {format_bytes(held.budget.total)} they may hold at once "
        f"(ANYBAND_MAX_PREDICT_INFLIGHT_BYTES), and {what} needs {format_bytes(needed)} more; "
        f"retry in a moment",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _read_tiles(
    files: list[UploadedFile], model_input: ModelInput, settings: Settings, held: Reservation
) -> list[tuple[np.ndarray, float, list[str]]]:
    """Each tile checked as untrusted and against the model, then made ready for it, with the
    share of its pixels that are valid and what suggests it is not in the training data's
    units. The
    request's pixels, as read and as the model's float32, must fit `max_predict_bytes` and, with
    every other request in flight, `max_predict_inflight_bytes` (`held`): both checked from each
    header before its pixels are decoded (a small body can declare huge tiles)."""
    tiles, decoded = [], 0

    def check(info: RasterInfo, name: str) -> None:
        nonlocal decoded
        check_raster(info, model_input, name)
        for_model = declared_bytes(info.width, info.height, len(model_input.bands), "float32")
        needed = info.nbytes + for_model
        decoded += needed
        if decoded > settings.max_predict_bytes:
            raise Problem(
                413,
                f"the tiles of this request up to {name!r} decode to {format_bytes(decoded)} "
                f"(as read, plus float32 for the model), over the "
                f"{format_bytes(settings.max_predict_bytes)} one predict request may hold; "
                f"send them in several requests",
            )
        if not held.add(needed):
            raise _busy(held, repr(name), needed)

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
        prepared, valid = prepare_tile(pixels, model_input, info.nodata)
        tiles.append((prepared, valid, input_warnings(prepared, valid, info.dtype, model_input)))
    return tiles
