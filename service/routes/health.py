"""GET /healthz: open, reports the database (and the broker once workers exist)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service.deps import SessionDep
from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, operation_id="health")
def health(session: SessionDep):
    try:
        session.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:  # report, don't raise: this is what monitoring reads
        database = f"error: {exc.__class__.__name__}"
    body = Health(
        status="ok" if database == "ok" else "degraded", database=database, broker="not configured"
    )
    return JSONResponse(body.model_dump(), status_code=200 if database == "ok" else 503)
