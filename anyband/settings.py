"""Settings read from the environment (prefix ANYBAND_), defined once for library, service and worker."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ANYBAND_", extra="ignore")

    # Pretrained weights: an explicit path wins over Keras' cache folders.
    imagenet_weights: Path | None = None
    # Off by default: a GPU box behind a firewall should fail fast with instructions, not hang.
    allow_downloads: bool = False


@lru_cache
def get_settings() -> Settings:
    return Settings()
