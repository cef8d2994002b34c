"""GET /healthz: open; reports the database, the broker and the workers heard from lately."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from anyband.jobs import live_workers
from service.broker import broker_health
from service.deps import SessionDep, SettingsDep
from service.schemas import Health

router = APIRouter(tags=["health"])

WORKER_SILENCE_SECONDS = 60.0


@router.get("/healthz", response_model=Health, operation_id="health")
def health(request: Request, session: SessionDep, settings: SettingsDep):
    workers = 0
    try:
        session.execute(text("SELECT 1"))
        database = "ok"
        workers = len(live_workers(session, max(WORKER_SILENCE_SECONDS, settings.lease_seconds)))
    except Exception as exc:  # report, don't raise: this is what monitoring reads
        database = f"error: {exc.__class__.__name__}"
    broker = broker_health(request.app.state.celery, settings)
    ok = database == "ok" and broker == "ok"
    # No worker is not an outage of the API: jobs wait queued until one starts.
    body = Health(
        status="ok" if ok else "degraded", database=database, broker=broker, workers=workers
    )
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
