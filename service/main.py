"""Builds the FastAPI app: settings, database, problem-detail errors, one router per resource."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from anyband.settings import Settings, get_settings
from anyband.store import init_db
from service.broker import make_client
from service.problems import install_problem_handlers
from service.routes import datasets, health, jobs, models, predictions, scenes, weights
from service.serving import Serving

log = logging.getLogger("anyband.service")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        app.state.sessions = init_db(settings.sqlalchemy_url)
        app.state.celery = make_client(settings)
        app.state.serving = Serving(settings)
        if not settings.api_key_list:
            log.warning("ANYBAND_API_KEYS is empty: authentication is OFF (bind to 127.0.0.1 only)")
        yield
        await app.state.serving.close()
        app.state.sessions.kw["bind"].dispose()

    # /docs and /redoc with their scripts served from here, not from a CDN: GPU machines are
    # often offline (the assets under /static-offline-docs, Swagger UI 5: OpenAPI 3.1).
    app = FastAPIOffline(
        title="anyband",
        version="0.1.0",
        summary="Fine-tune ImageNet ResNet50 on satellite imagery with any number of bands.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_problem_handlers(app)
    app.include_router(health.router)
    app.include_router(datasets.router)
    app.include_router(weights.router)
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(predictions.router)
    app.include_router(scenes.router)
    return app


app = create_app()
