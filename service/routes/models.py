"""Trained models: list, show, download their artifacts, delete."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

from anyband.artifacts import ARTIFACT_MEDIA_TYPES, ARTIFACT_NAMES, MODEL_FILE, verify_sha256
from anyband.errors import ModelFileMismatchError
from anyband.paths import model_dir
from anyband.store import Model, Scene
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
from service.schemas import ModelPublic, ModelsPublic

router = APIRouter(
    prefix="/v1/models",
    tags=["models"],
    dependencies=[Depends(require_api_key)],
    responses=PROBLEM_RESPONSES,
)


@router.get("", response_model=ModelsPublic, operation_id="list_models")
def list_models(
    session: SessionDep, dataset_id: str | None = None, offset: Offset = 0, limit: Limit = 100
):
    rows, count = newest_first(session, Model, offset, limit, dataset_id=dataset_id)
    return ModelsPublic(data=rows, count=count)


@router.get("/{model_id}", response_model=ModelPublic, operation_id="get_model")
def get_model(model_id: str, session: SessionDep):
    return get_or_404(session, model_id)


@router.get(
    "/{model_id}/artifacts/{name}",
    operation_id="get_model_artifact",
    response_class=FileResponse,
    responses={200: {"content": {t: {} for t in sorted(set(ARTIFACT_MEDIA_TYPES.values()))}}},
)
def get_artifact(model_id: str, name: str, session: SessionDep, settings: SettingsDep):
    model = get_or_404(session, model_id)
    if name not in ARTIFACT_NAMES:  # also what keeps `name` from naming any other path
        raise Problem(404, f"no artifact '{name}'. Expected one of: {', '.join(ARTIFACT_NAMES)}")
    path = model_dir(settings.data_dir, model_id) / name
    if not path.is_file():
        raise Problem(404, f"artifact '{name}' of model '{model_id}' is missing from storage")
    if name == MODEL_FILE:
        try:
            verify_sha256(path, model.sha256)
        except ModelFileMismatchError as exc:
            raise Problem(409, f"model '{model_id}': {exc}") from exc
    return FileResponse(path, media_type=ARTIFACT_MEDIA_TYPES[name], filename=f"{model_id}-{name}")


@router.delete("/{model_id}", status_code=204, operation_id="delete_model")
def delete_model(model_id: str, request: Request, session: SessionDep, settings: SettingsDep):
    """The model's record and its folder (model.keras and every artifact). Scenes already
    mapped with it are kept; its job's record stays, naming a model that no longer exists."""
    model = get_or_404(session, model_id)
    in_use_by(session, Scene, f"model '{model_id}'", model_id=model_id)
    removed = remove(session, model, model_dir(settings.data_dir, model_id))
    # This API stops serving it now; another API process notices its file is gone.
    request.app.state.serving.forget(model_id)
    return removed


def get_or_404(session, model_id: str) -> Model:
    model = session.get(Model, model_id)
    if model is None:
        raise Problem(404, f"no model with id '{model_id}'")
    return model
