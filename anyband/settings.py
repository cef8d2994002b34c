"""Settings read from the environment (prefix ANYBAND_), defined once for library, service and worker."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MB = 2**20
GB = 2**30


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ANYBAND_", extra="ignore")

    # Storage: datasets/, jobs/, models/, weights/ and the SQLite database live here.
    data_dir: Path = Path("./anyband-data")
    # Empty: SQLite at {data_dir}/anyband.db. Else any SQLAlchemy URL, e.g.
    # postgresql+psycopg://user:pass@host/db
    database_url: str = ""
    # Comma-separated bearer keys. Empty: auth off and the API binds to 127.0.0.1 only.
    api_keys: str = ""

    # Uploads (bytes). Headers lie, so every limit is counted on the bytes actually read.
    max_upload_bytes: int = Field(default=4 * GB, gt=0)
    max_weights_bytes: int = Field(default=512 * MB, gt=0)
    max_zip_entries: int = Field(default=50_000, gt=0)
    max_dataset_bytes: int = Field(default=16 * GB, gt=0)  # uncompressed, whole zip
    max_entry_bytes: int = Field(default=512 * MB, gt=0)  # one file inside the zip
    max_compression_ratio: float = Field(default=100.0, gt=1)
    max_tile_bytes: int = Field(default=256 * MB, gt=0)  # width*height*bands*itemsize
    max_cache_bytes: int = Field(default=32 * GB, gt=0)  # the float32 training cache on disk

    # Pretrained weights: an explicit path wins over Keras' cache folders.
    imagenet_weights: Path | None = None
    # Off by default: a GPU box behind a firewall should fail fast with instructions, not hang.
    allow_downloads: bool = False

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'anyband.db'}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
