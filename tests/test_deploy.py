"""docker-compose.yml and the Dockerfiles: one settings block, one GPU per worker, shared data."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
API_DOCKERFILE = ROOT / "docker" / "api.Dockerfile"
WORKER_DOCKERFILE = ROOT / "docker" / "worker.Dockerfile"
KERAS_MODELS_DIR = "/root/.keras/models"  # ~/.keras/models for root, the images' user

# The commented-out worker for a second GPU, as the compose file documents it.
SECOND_GPU_BLOCK = re.compile(r"^  # (worker-gpu1:)\n((?:  #   .*\n)+)", re.MULTILINE)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _anyband_env(service: dict) -> dict[str, str]:
    return {k: v for k, v in _environment(service).items() if k.startswith("ANYBAND_")}


def _dockerfile(service: dict) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return ROOT / build / "Dockerfile"
    return ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")


def _dockerfile_command(path: Path) -> list[str]:
    """ENTRYPOINT + CMD of a Dockerfile (the last of each), as argv."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"(ENTRYPOINT|CMD)\s+(.+)", line.strip())
        if match:
            value = match.group(2)
            found[match.group(1)] = json.loads(value) if value.startswith("[") else [value]
    return found.get("ENTRYPOINT", []) + found.get("CMD", [])


def _command(service: dict) -> list[str]:
    """What the service's container runs: compose's command, else its image's."""
    command = service.get("command")
    if command is None:
        dockerfile = _dockerfile(service)
        return _dockerfile_command(dockerfile) if dockerfile and dockerfile.is_file() else []
    return shlex.split(command) if isinstance(command, str) else list(command)


def _runs_anyband_worker(service: dict) -> bool:
    return " ".join(_command(service)).startswith("anyband worker")


def _worker_services(services: dict[str, dict]) -> dict[str, dict]:
    return {name: s for name, s in services.items() if _runs_anyband_worker(s)}


def _gpu_devices(service: dict) -> list[dict]:
    deploy = service.get("deploy") or {}
    return ((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or []


def _mounts(service: dict) -> dict[str, tuple[str, str]]:
    """target -> (source, mode) for the service's short- or long-syntax volumes."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            mounts[target] = (source, mode[0] if mode else "rw")
        else:
            mode = "ro" if volume.get("read_only") else "rw"
            mounts[volume["target"]] = (volume.get("source", ""), mode)
    return mounts


def _pip_install_lines(dockerfile: Path) -> list[str]:
    return [line for line in dockerfile.read_text().splitlines() if "pip install" in line]


def _with_second_gpu_worker(text: str) -> str:
    """The compose file with its documented worker-gpu1 block uncommented."""
    match = SECOND_GPU_BLOCK.search(text)
    assert match, "docker-compose.yml should document a commented-out worker-gpu1 block"
    body = match.group(2).replace("  #   ", "    ")
    return text[: match.start()] + f"  {match.group(1)}\n{body}" + text[match.end() :]


def test_compose_defines_redis_postgres_api_worker_and_flower(services):
    assert {"redis", "postgres", "api", "worker", "flower"} <= set(services)
    assert services["redis"]["image"].split(":")[0] == "redis"
    assert services["postgres"]["image"].split(":")[0] == "postgres"


def test_api_and_every_worker_read_the_identical_anyband_settings(services):
    api_env = _anyband_env(services["api"])
    assert {
        "ANYBAND_DATA_DIR",
        "ANYBAND_DATABASE_URL",
        "ANYBAND_BROKER_URL",
        "ANYBAND_API_KEYS",
    } <= set(api_env)
    workers = _worker_services(services)
    assert "worker" in workers
    for name, worker in workers.items():
        assert _anyband_env(worker) == api_env, f"{name} and api disagree on ANYBAND_ settings"


def test_api_keys_must_be_given_rather_than_defaulting_to_auth_off(services):
    # With no keys the API binds to 127.0.0.1 inside its container: unreachable, so refuse to start.
    assert _anyband_env(services["api"])["ANYBAND_API_KEYS"].startswith("${ANYBAND_API_KEYS:?")


def test_broker_url_points_at_the_redis_service(services):
    broker = urlsplit(_anyband_env(services["api"])["ANYBAND_BROKER_URL"])
    assert broker.scheme == "redis"
    assert broker.hostname in services
    assert services[broker.hostname]["image"].split(":")[0] == "redis"
    assert broker.port in (None, 6379)


def test_database_url_points_at_postgres_with_its_own_credentials(services):
    database = urlsplit(_anyband_env(services["api"])["ANYBAND_DATABASE_URL"])
    assert database.scheme == "postgresql+psycopg"
    assert database.hostname in services
    postgres = services[database.hostname]
    assert postgres["image"].split(":")[0] == "postgres"
    assert database.port in (None, 5432)
    env = _environment(postgres)
    assert database.username == env["POSTGRES_USER"]
    assert database.password == env["POSTGRES_PASSWORD"]
    assert database.path.lstrip("/") == env["POSTGRES_DB"]


def test_postgres_keeps_its_data_on_a_named_volume(compose, services):
    source, _ = _mounts(services["postgres"])["/var/lib/postgresql/data"]
    assert source in (compose.get("volumes") or {})


def test_worker_reserves_gpu_0_through_the_nvidia_driver(services):
    [device] = _gpu_devices(services["worker"])
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert device["device_ids"] == ["0"]


def _assert_one_distinct_gpu_per_worker(services: dict[str, dict]) -> None:
    seen = {}
    for name, worker in _worker_services(services).items():
        devices = _gpu_devices(worker)
        assert len(devices) == 1, f"{name} should reserve one device entry, got {devices}"
        [device] = devices
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert "count" not in device, f"{name}: name its GPU with device_ids, not count"
        assert len(device["device_ids"]) == 1, f"{name} should reserve exactly one GPU"
        [gpu] = device["device_ids"]
        assert gpu not in seen, f"{name} and {seen.get(gpu)} both reserve GPU {gpu}"
        seen[gpu] = name


def test_every_worker_service_reserves_exactly_one_gpu_of_its_own(services):
    assert _worker_services(services)
    _assert_one_distinct_gpu_per_worker(services)


def test_workers_stop_with_a_cold_shutdown_that_hands_their_job_back(services):
    # docker's default SIGTERM is Celery's warm shutdown: it waits for the whole training and is
    # SIGKILLed after 10 s. SIGQUIT hands the job back after the current batch.
    text = COMPOSE_FILE.read_text()
    scaled = yaml.safe_load(_with_second_gpu_worker(text))["services"]
    for name, service in _worker_services(scaled).items():
        assert service.get("stop_signal") == "SIGQUIT", name
        assert service.get("stop_grace_period") == "60s", name


def test_documented_second_gpu_worker_runs_on_gpu_1_with_the_same_settings(services):
    text = COMPOSE_FILE.read_text()
    block = SECOND_GPU_BLOCK.search(text)
    assert block and len(block.group(0).splitlines()) == 3, "an extra GPU worker is 3 lines"
    scaled = yaml.safe_load(_with_second_gpu_worker(text))["services"]
    extra = scaled["worker-gpu1"]
    assert _runs_anyband_worker(extra)
    assert _gpu_devices(extra)[0]["device_ids"] == ["1"]
    assert _anyband_env(extra) == _anyband_env(services["api"])
    assert _mounts(extra) == _mounts(services["worker"])
    _assert_one_distinct_gpu_per_worker(scaled)


def test_api_and_workers_mount_one_named_data_volume_at_anyband_data_dir(compose, services):
    data_dir = _anyband_env(services["api"])["ANYBAND_DATA_DIR"]
    api_source, api_mode = _mounts(services["api"])[data_dir]
    assert api_source in (compose.get("volumes") or {}), "data should live on a named volume"
    assert api_mode == "rw"
    for name, worker in _worker_services(services).items():
        assert _mounts(worker).get(data_dir) == (api_source, "rw"), f"{name} sees other files"


def test_imagenet_weights_folder_is_mounted_read_only_where_keras_looks(services):
    for name in ("api", *_worker_services(services)):
        source, mode = _mounts(services[name])[KERAS_MODELS_DIR]
        assert source == "./weights", name
        assert mode == "ro", name
    for dockerfile in (API_DOCKERFILE, WORKER_DOCKERFILE):
        # ~ is /root only while the image runs as root.
        assert not re.search(r"^\s*USER\s", dockerfile.read_text(), re.MULTILINE), dockerfile


def test_build_sections_name_existing_contexts_and_dockerfiles(services):
    built = {name: _dockerfile(s) for name, s in services.items() if "build" in s}
    assert set(built) >= {"api", "worker"}
    for name, dockerfile in built.items():
        assert dockerfile.is_file(), f"{name}: no Dockerfile at {dockerfile}"
    assert built["api"] == API_DOCKERFILE
    assert built["worker"] == WORKER_DOCKERFILE


def test_worker_image_installs_the_gpu_extra_and_the_api_image_does_not():
    worker_installs = _pip_install_lines(WORKER_DOCKERFILE)
    api_installs = _pip_install_lines(API_DOCKERFILE)
    assert any('".[gpu]"' in line for line in worker_installs), worker_installs
    assert api_installs, "the api image should pip install the project"
    assert not any("gpu" in line for line in api_installs), api_installs


def test_dockerfiles_copy_every_package_that_pyproject_installs():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    includes = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in includes}
    for dockerfile in (API_DOCKERFILE, WORKER_DOCKERFILE):
        copied = set()
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                copied |= {part.rstrip("/") for part in line.split()[1:-1]}
        assert packages | {"pyproject.toml", "README.md"} <= copied, dockerfile


def test_dockerfiles_install_libexpat_that_rasterio_wheels_need():
    for dockerfile in (API_DOCKERFILE, WORKER_DOCKERFILE):
        text = dockerfile.read_text()
        assert text.startswith("#") and "FROM python:3.11-slim" in text
        assert re.search(r"apt-get install[^\n]*libexpat1", text), dockerfile


def test_api_image_serves_on_the_port_compose_publishes_and_probes(services):
    api = services["api"]
    command = _command(api)
    assert command[:2] == ["anyband", "api"]
    port = command[command.index("--port") + 1]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert f"{port}:{port}" in api["ports"]
    probe = " ".join(api["healthcheck"]["test"])
    assert f"http://localhost:{port}/healthz" in probe


def test_api_waits_for_healthy_redis_and_postgres(services):
    depends = services["api"]["depends_on"]
    for name in ("redis", "postgres"):
        assert depends[name]["condition"] == "service_healthy"
        assert services[name]["healthcheck"]["test"], f"{name} needs a healthcheck"
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]


def test_every_depends_on_target_is_a_service(services):
    for name, service in services.items():
        for target in service.get("depends_on") or []:
            assert target in services, f"{name} depends on unknown service {target}"


def test_flower_is_optional_and_watches_the_same_broker(services):
    flower = services["flower"]
    broker = _anyband_env(services["api"])["ANYBAND_BROKER_URL"]
    brokers = [arg.split("=", 1)[1] for arg in _command(flower) if arg.startswith("--broker=")]
    assert brokers == [broker]
    assert flower["profiles"] == ["monitoring"]


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "anyband-data", "weights"} <= ignored


def _compose_command() -> list[str] | None:
    """docker compose (v2 plugin), else the docker-compose program (v1, what .ci/run installs)."""
    if shutil.which("docker") is not None:
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose") is not None:
        return ["docker-compose"]
    return None


def test_docker_compose_accepts_the_file_and_refuses_to_start_without_api_keys():
    compose = _compose_command()
    if compose is None:
        if os.environ.get("CI"):
            raise AssertionError("CI must provide docker compose or docker-compose (.ci/run)")
        pytest.skip("neither docker compose nor docker-compose is installed")
    env = {**os.environ, "ANYBAND_API_KEYS": "test-key"}
    base = [*compose, "--project-directory", str(ROOT)]

    def config(files: list[str], env: dict, stdin: str | None = None):
        args = [*base, *(arg for f in files for arg in ("-f", f)), "config", "-q"]
        return subprocess.run(args, env=env, input=stdin, capture_output=True, text=True, cwd=ROOT)

    result = config([str(COMPOSE_FILE)], env)
    assert result.returncode == 0, result.stderr
    scaled = config(["-"], env, stdin=_with_second_gpu_worker(COMPOSE_FILE.read_text()))
    assert scaled.returncode == 0, scaled.stderr
    no_keys = {k: v for k, v in env.items() if k != "ANYBAND_API_KEYS"}
    refused = config([str(COMPOSE_FILE)], no_keys)
    assert refused.returncode != 0
    assert "ANYBAND_API_KEYS" in refused.stderr
