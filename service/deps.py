"""Shared route dependencies as Annotated aliases: settings, database session, API key."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from anyband.settings import Settings
from anyband.store import JOB_ACTIVE, JOB_STATUSES
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

# Paging of every list: newest first, at most MAX_PAGE rows a page.
MAX_PAGE = 1000
Offset = Annotated[int, Query(ge=0, description="rows to skip, newest first")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"rows to return, 1..{MAX_PAGE}")]


def newest_first(session: Session, table, offset: int, limit: int, **equal) -> tuple[list, int]:
    """One page of `table`'s rows whose columns equal each of `equal` that is not None, newest
    first, and how many rows match in all. A `status` filter must be a job status (422)."""
    status = equal.get("status")
    if status is not None and status not in JOB_STATUSES:
        raise Problem(
            422, f"status must be one of {', '.join(JOB_STATUSES)}. Received: status={status!r}"
        )
    query = select(table)
    for column, value in equal.items():
        if value is not None:
            query = query.where(getattr(table, column) == value)
    rows = session.scalars(query.order_by(table.created_at.desc()).offset(offset).limit(limit))
    count = session.scalar(select(func.count()).select_from(query.subquery()))
    return rows.all(), count


def in_use_by(session: Session, table, what: str, matches=None, **equal) -> None:
    """409 naming them if queued or running rows of `table` (jobs, scenes) match `equal` (and
    `matches(row)`, if given): what they use must not be deleted under them. `what`: the thing
    being deleted, for the message."""
    query = select(table).where(table.status.in_(JOB_ACTIVE))
    for column, value in equal.items():
        query = query.where(getattr(table, column) == value)
    active = [row.id for row in session.scalars(query) if matches is None or matches(row)]
    if active:
        kind = table.__tablename__[:-1]  # job, scene
        raise Problem(
            409,
            f"{what} is in use by {len(active)} queued or running {kind}(s) "
            f"({', '.join(active)}); cancel them (POST /v1/{table.__tablename__}/{{id}}/cancel) "
            "or wait for them to finish",
        )


def refuse_while_active(row, progress: str = "") -> None:
    """409 if the job or scene `row` is queued or running: it is cancelled first."""
    if row.status in JOB_ACTIVE:
        kind, table = row.__tablename__[:-1], row.__tablename__
        raise Problem(
            409,
            f"{kind} '{row.id}' is {row.status}{progress}; cancel it first: "
            f"POST /v1/{table}/{row.id}/cancel",
        )


def remove(session: Session, row, folder: Path) -> Response:
    """Every DELETE's end: the record, then its folder on disk; 204."""
    session.delete(row)
    session.commit()
    shutil.rmtree(folder, ignore_errors=True)
    return Response(status_code=204)


async def require_api_key(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    keys = settings.api_key_list
    if not keys:
        return
    if credentials is None:
        sent = request.headers.get("authorization", "").split(" ", 1)[0]
        what = f"the {sent!r} scheme is not accepted" if sent else "missing API key"
        raise _unauthorized(f"{what}: send 'Authorization: Bearer <key>'")
    if not any(secrets.compare_digest(credentials.credentials, key) for key in keys):
        raise _unauthorized("API key not recognised: use one of the keys in ANYBAND_API_KEYS")


def _unauthorized(detail: str) -> Problem:
    # RFC 9110 section 11.6.1: a 401 names the scheme it wants.
    return Problem(401, detail, headers={"WWW-Authenticate": 'Bearer realm="anyband"'})
