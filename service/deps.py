"""Shared route dependencies as Annotated aliases: settings, database session, API key."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from anyband.settings import Settings
from service.problems import Problem

_bearer = HTTPBearer(auto_error=False, description="one of ANYBAND_API_KEYS")


# Dependencies that never block are `async def`: FastAPI runs a plain `def` dependency in its
# threadpool, a thread hop per request for nothing.
async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_db)]


async def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    keys = settings.api_key_list
    if not keys:
        return
    if credentials is None:
        raise Problem(401, "missing API key: send 'Authorization: Bearer <key>'")
    if not any(secrets.compare_digest(credentials.credentials, key) for key in keys):
        raise Problem(401, "API key not recognised: use one of the keys in ANYBAND_API_KEYS")
