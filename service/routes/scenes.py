"""Whole scenes: POST /v1/models/{id}/scenes queues a sliding-window class map; GET its status
and its result GeoTIFF."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from anyband import jobs
from anyband.artifacts import MODEL_FILE, read_card, verify_sha256, why_unusable
from anyband.errors import InvalidRasterError, ModelFileMismatchError
from anyband.inference import ModelInput, pixel_warnings
from anyband.paths import model_dir, scene_dir
from anyband.queues import SCENE_TASK
from anyband.scene_runner import SCENE_INPUT, SCENE_PREVIEW, SCENE_RESULT
from anyband.scenes import check_scene, window_count
from anyband.store import JOB_QUEUED, JOB_RUNNING, JOB_SUCCEEDED, Scene, new_id
from service.broker import enqueue
from service.deps import (
    Limit,
    Offset,
    SessionDep,
    SettingsDep,
    newest_first,
    refuse_while_active,
    remove,
    require_api_key,
)
from service.problems import PROBLEM_RESPONSES, Problem
from service.routes.models import get_or_404 as get_model_or_404
from service.schemas import ScenePublic, ScenesPublic
from service.uploads import multipart_body, receive_multipart

router = APIRouter(
    tags=["inference"], dependencies=[Depends(require_api_key)], responses=PROBLEM_RESPONSES
)


RESULT_RETRY_SECONDS = 5  # a queued or running scene's result: ask again in this long


@router.post(
    "/v1/models/{model_id}/scenes",
    status_code=202,
    response_model=ScenePublic,
    operation_id="create_scene",
    openapi_extra=multipart_body(
        "one GeoTIFF scene with the dataset's band count",
        stride={"type": "integer", "description": "window step in px (default: the tile size)"},
    ),
)
async def create_scene(model_id: str, request: Request, response: Response, settings: SettingsDep):
    with request.app.state.sessions() as session:
        record = get_model_or_404(session, model_id)
    # Before the scene is received: a model the worker would refuse is refused here, as predict
    # refuses it, not accepted and failed minutes later.
    folder = model_dir(settings.data_dir, model_id)
    try:
        await run_in_threadpool(verify_sha256, folder / MODEL_FILE, record.sha256)
        card = read_card(folder)
    except (ModelFileMismatchError, FileNotFoundError) as exc:
        raise Problem(409, f"model '{model_id}' cannot be served: {why_unusable(exc)}") from exc
    model_input = ModelInput.from_card(card)
    upload = await receive_multipart(
        request, settings.data_dir / "uploads", settings.max_upload_bytes
    )
    try:
        uploaded = upload.file("file")
        stride = _stride(upload.fields.get("stride"), min(record.tile_size))
        try:
            info = await run_in_threadpool(
                check_scene,
                uploaded.path,
                model_input,
                tuple(record.tile_size),
                max_bytes=settings.max_scene_bytes,
                name=uploaded.filename,
            )
        except InvalidRasterError as exc:
            raise Problem(422, str(exc), errors=[{"field": "file", "message": str(exc)}]) from exc
        scene_id = new_id()
        folder = scene_dir(settings.data_dir, scene_id)
        folder.mkdir(parents=True)
        shutil.move(uploaded.path, folder / SCENE_INPUT)
    finally:
        upload.remove()
    scene = Scene(
        id=scene_id,
        model_id=model_id,
        filename=uploaded.filename[:300],
        width=info.width,
        height=info.height,
        stride=stride,
        # Known now, so that progress never reads "0 of 0" while the worker opens the scene.
        windows_total=window_count(info.width, info.height, tuple(record.tile_size), stride),
        # Its worker adds what the pixels show (band means far from the training data's).
        warnings=pixel_warnings(info.dtype, None, model_input, "scene") or None,
    )
    sessions = request.app.state.sessions
    with sessions() as session:
        session.add(scene)
        session.commit()
    if enqueue(request.app.state.celery, SCENE_TASK, scene_id):
        jobs.mark_enqueued(sessions, scene_id, table=Scene)
    response.headers["Location"] = f"/v1/scenes/{scene_id}"
    with sessions() as session:
        return ScenePublic.model_validate(session.get(Scene, scene_id))


@router.get("/v1/scenes", response_model=ScenesPublic, operation_id="list_scenes")
def list_scenes(
    session: SessionDep,
    model_id: str | None = None,
    status: str | None = None,
    offset: Offset = 0,
    limit: Limit = 100,
):
    rows, count = newest_first(session, Scene, offset, limit, model_id=model_id, status=status)
    return ScenesPublic(data=[ScenePublic.model_validate(row) for row in rows], count=count)


@router.get("/v1/scenes/{scene_id}", response_model=ScenePublic, operation_id="get_scene")
def get_scene(scene_id: str, session: SessionDep):
    return ScenePublic.model_validate(_get_or_404(session, scene_id))


@router.post(
    "/v1/scenes/{scene_id}/cancel",
    status_code=202,
    response_model=ScenePublic,
    operation_id="cancel_scene",
)
def cancel_scene(scene_id: str, session: SessionDep):
    """A running scene's worker stops at its next progress report, within seconds."""
    scene = _get_or_404(session, scene_id)
    if not jobs.cancel(session, scene_id, table=Scene):
        session.refresh(scene)
        raise Problem(
            409,
            f"scene '{scene_id}' already {scene.status}; only queued or running scenes can be "
            "cancelled",
        )
    session.refresh(scene)
    return ScenePublic.model_validate(scene)


@router.delete("/v1/scenes/{scene_id}", status_code=204, operation_id="delete_scene")
def delete_scene(scene_id: str, session: SessionDep, settings: SettingsDep):
    """The scene's record, its upload and its class map."""
    scene = _get_or_404(session, scene_id)
    refuse_while_active(scene, _windows_done(scene))
    return remove(session, scene, scene_dir(settings.data_dir, scene_id))


@router.get(
    "/v1/scenes/{scene_id}/result.tif",
    operation_id="get_scene_result",
    response_class=FileResponse,
    responses={200: {"content": {"image/tiff": {}}}},
)
def get_scene_result(scene_id: str, session: SessionDep, settings: SettingsDep):
    path = _finished_file(session, settings, scene_id, SCENE_RESULT)
    if not path.is_file():
        raise Problem(404, f"the result of scene '{scene_id}' is missing from storage")
    return FileResponse(path, media_type="image/tiff", filename=f"{scene_id}-classes.tif")


@router.get(
    "/v1/scenes/{scene_id}/preview.png",
    operation_id="get_scene_preview",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}},
)
def get_scene_preview(scene_id: str, session: SessionDep, settings: SettingsDep):
    """The class map as a picture (sampled at most 1024 px on its longer side): each class in
    its own colour, in the scene's coordinates, with each class's share of the valid pixels."""
    path = _finished_file(session, settings, scene_id, SCENE_PREVIEW)
    if not path.is_file():
        raise Problem(
            404,
            f"scene '{scene_id}' has no preview: it was mapped before previews were drawn, or "
            f"drawing it failed (the worker's log says why); its class map is at "
            f"/v1/scenes/{scene_id}/result.tif",
        )
    return FileResponse(path, media_type="image/png")


def _finished_file(session, settings, scene_id: str, name: str) -> Path:
    scene = _get_or_404(session, scene_id)
    if scene.status in (JOB_QUEUED, JOB_RUNNING):
        raise Problem(
            409,
            f"scene '{scene_id}' is {scene.status}{_windows_done(scene)}; no result yet",
            headers={"Retry-After": str(RESULT_RETRY_SECONDS)},
        )
    if scene.status != JOB_SUCCEEDED:
        why = f": {scene.error}" if scene.error else ""
        raise Problem(409, f"scene '{scene_id}' is {scene.status}; it has no result{why}")
    return scene_dir(settings.data_dir, scene_id) / name


def _windows_done(scene: Scene) -> str:
    total = scene.windows_total
    return f" ({scene.windows_done} of {total} window{'s' if total != 1 else ''})"


def _stride(value: str | None, tile: int) -> int:
    if value in (None, ""):
        return tile
    try:
        stride = int(value)
    except ValueError:
        stride = 0
    if not 1 <= stride <= tile:
        message = (
            f"stride must be an integer in 1..{tile} (the model's tile size). Received: {value!r}"
        )
        raise Problem(422, message, errors=[{"field": "stride", "message": message}])
    return stride


def _get_or_404(session, scene_id: str) -> Scene:
    scene = session.get(Scene, scene_id)
    if scene is None:
        raise Problem(404, f"no scene with id '{scene_id}'")
    return scene
