# An anyband Celery worker for one NVIDIA GPU. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t anyband-worker .
# No nvidia/cuda base: the gpu extra (tensorflow[and-cuda]) installs the CUDA and cuDNN libraries
# as wheels; the host needs only the NVIDIA driver and the NVIDIA Container Toolkit.
FROM python:3.11-slim

ENV TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# rasterio's wheels bundle GDAL but not libexpat, which python:*-slim no longer ships.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libexpat1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY anyband/ anyband/
COPY service/ service/
COPY worker/ worker/
RUN pip install ".[gpu]"

# Concurrency, prefetch, pool and queue are set by the Celery app itself.
CMD ["anyband", "worker"]
