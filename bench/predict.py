"""Benchmark: predictions over HTTP and whole-scene class maps against raw calls of the same model.

    .venv/bin/python bench/predict.py [--requests 200] [--clients 16] [--per-client 48]
        [--rounds 3] [--scene-size 4096] [--memory-sizes 1024 4096] [--quick] [--breakdown]
        [--workdir /tmp] [--keep] [--json PATH]

One run makes a model the way the service does (a 13-band 64x64 dataset uploaded through the
app, a job with weights "none" and one epoch run by `run_training_job`), starts `anyband api` on
that data folder, and loads the same model in this process twice with `load_served_model`: as
the API serves it (`fold_batch_norm`, on by default) and as saved (`fold_batch_norm=False`). The
raw baseline is the latter: the plain Keras model in a compiled function (and its own
`keras_model.predict`). It measures:

1. one tile per `POST /v1/models/{id}/predict`, sequential: p50 and p99 latency, against the raw
   compiled model on the same prepared tile (batch 1), the two alternating call by call;
2. `--clients` concurrent clients sending one tile per request (`bench/loadgen.py`: a separate
   process, keep-alive connections, requests encoded before the clock starts, as `wrk` would):
   tiles/s, against the raw compiled model in batches of `predict_max_batch` and
   `keras_model.predict` on the same tiles, whichever is faster; also against the raw model in
   batches of `--clients` (the largest batch one-tile clients can make) and against the served
   function without HTTP at `predict_max_batch` (the serving overhead alone); then the same
   clients and tiles sent 8 to a request;
3. `classify_scene` on a tiled 13-band uint16 GeoTIFF: pixels/s against the raw compiled model on
   the same windows cut and prepared beforehand, in batches of 64; then the scene task's peak RSS,
   in its own process, for two square scenes, one as wide as the larger and as tall as the smaller
   and one the other way round (it maps a scene in chunks of columns, so its buffers should grow
   with neither the width nor the height).

It prints each figure against its baseline and whether the project's target is met; it never
asserts speed. It exits non-zero if a request fails or the paths disagree on a prediction.
`--breakdown` then measures where the server's time goes (about a minute more).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# `python bench/predict.py` puts bench/ first on the path, not the repo: tests.tiles lives there.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from anyband.inference import prepare
from anyband.paths import model_dir
from anyband.serving import ServedModel, load_served_model
from anyband.settings import Settings
from tests.tiles import separable_classes, tile_bytes, write_dataset_zip

try:
    import httpx
    import psutil
except ImportError as error:
    sys.exit(
        f"bench/predict.py needs httpx and psutil: .venv/bin/pip install httpx psutil ({error})"
    )

from api_process import free_port, wait_for_health

REPO = Path(__file__).resolve().parent.parent
# The project's targets.
TARGET_P50_EXTRA_MS = 15.0  # one tile over HTTP: p50 above the raw call's
TARGET_CONCURRENT_RATIO = 0.7  # concurrent clients' tiles/s over raw batched predict's
TARGET_SCENE_RATIO = 0.8  # classify_scene's pixels/s over raw predict's on the same windows

MB = 2**20
BANDS = 13
TILE_SIZE = 64
CLASSES = ("cropland", "forest", "urban", "water")
NODATA = 0
SCENE_BATCH = 64  # classify_scene's default batch_size
SAMPLE_SECONDS = 0.01
WARMUP_REQUESTS = 10
TILES_PER_REQUEST = 8  # the concurrent load again, the same tiles this many to a request
FULL = {
    "requests": 200,
    "per_client": 48,
    "rounds": 3,
    "scene_size": 4096,
    "memory_sizes": [1024, 4096],
}
QUICK = {
    "requests": 50,
    "per_client": 8,
    "rounds": 1,
    "scene_size": 1024,
    "memory_sizes": [512, 2048],
}


# ---------------------------------------------------------------- setup


def train_model(root: Path) -> tuple[Settings, dict]:
    """Upload a dataset through the app, submit a job, run it as a worker does: (settings, model)."""
    import keras
    from fastapi.testclient import TestClient

    from anyband.runner import run_training_job
    from service.main import create_app

    # The caller's other ANYBAND_ settings (batching, limits) apply here and in the server.
    settings = Settings(data_dir=root / "data", api_keys="", database_url="")
    classes = separable_classes(names=CLASSES, per_class=8, shape=(TILE_SIZE, TILE_SIZE, BANDS))
    zip_path = write_dataset_zip(root / "dataset.zip", classes, nodata=NODATA)
    with TestClient(create_app(settings)) as client, zip_path.open("rb") as handle:
        files = {"file": (zip_path.name, handle, "application/zip")}
        dataset = _expect(client.post("/v1/datasets", files=files, data={"name": "bench"}), 201)
        spec = {"dataset_id": dataset["id"], "weights": "none", "epochs": 1, "batch_size": 8}
        job_id = _expect(client.post("/v1/jobs", json=spec), 202)["id"]
    status = run_training_job(job_id, settings, "bench")
    with TestClient(create_app(settings)) as client:
        job = _expect(client.get(f"/v1/jobs/{job_id}"), 200)
        if status != "succeeded":
            raise SystemExit(f"training job {job_id} ended {status}: {job.get('error')}")
        model = _expect(client.get(f"/v1/models/{job['model_id']}"), 200)
    keras.backend.clear_session()  # the training graph is not needed any more
    return settings, model


def _expect(response, status: int) -> dict:
    if response.status_code != status:
        raise SystemExit(
            f"{response.request.method} {response.request.url.path}: expected {status}, got "
            f"{response.status_code}: {response.text[:2000]}"
        )
    return response.json()


def request_tiles(count: int = 64) -> list[np.ndarray]:
    """Distinct (64, 64, 13) uint16 tiles over the classes; one in 7 has a strip of nodata."""
    by_class = separable_classes(
        CLASSES, per_class=-(-count // len(CLASSES)), shape=(TILE_SIZE, TILE_SIZE, BANDS), seed=1
    )
    tiles = [tile for group in zip(*by_class.values(), strict=True) for tile in group][:count]
    for tile in tiles[::7]:
        tile[20:24] = NODATA
    return tiles


def tile_upload(name: str, data: bytes) -> list:
    return [("files", (name, data, "image/tiff"))]


# ---------------------------------------------------------------- the server


class Server:
    """`anyband api` as a subprocess; `instrumented`: the same app plus routes that report its
    micro-batcher's model calls and its threads (for --breakdown only)."""

    def __init__(self, settings: Settings, log_path: Path, instrumented: bool = False):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {
            **os.environ,
            "ANYBAND_DATA_DIR": str(settings.data_dir),
            "ANYBAND_DATABASE_URL": "",  # SQLite inside data_dir, whatever the caller's shell says
            "ANYBAND_API_KEYS": "",
        }
        if instrumented:
            command = [sys.executable, __file__, "--child-api", str(self.port)]
        else:
            command = [sys.executable, "-m", "anyband.cli", "api", "--host", "127.0.0.1"]
            command += ["--port", str(self.port), "--log-level", "warning"]
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )

    def __enter__(self) -> Server:
        try:
            wait_for_health(self.base_url, self.process, log_path=self.log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def child_api(port: int) -> None:
    """The --breakdown server: `anyband api`'s app and uvicorn call, plus two reporting routes."""
    import uvicorn

    from service.main import app

    @app.get("/bench/batch-sizes", include_in_schema=False)
    def batch_sizes() -> dict:
        batchers = app.state.serving._batchers
        return {model_id: batcher.batch_sizes for model_id, (_, batcher) in batchers.items()}

    @app.get("/bench/threads", include_in_schema=False)
    def threads() -> dict:
        return {str(thread.native_id): thread.name for thread in threading.enumerate()}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def check_answer(response: httpx.Response, what: str) -> None:
    if response.status_code != 200:
        raise SystemExit(
            f"{what}: expected 200, got {response.status_code}: {response.text[:2000]}"
        )


# ---------------------------------------------------------------- 1. one tile per request


def measure_single(server: Server, model: dict, served: ServedModel, uploads, prepared, n: int):
    """Sequential requests and raw batch-1 calls (`served`: the raw model), alternating, so
    both meet the same machine."""
    url = f"/v1/models/{model['id']}/predict"
    http_ms, raw_ms = [], []
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        for i in range(WARMUP_REQUESTS):  # the first loads and traces the model in the server
            check_answer(client.post(url, files=tile_upload("warmup.tif", uploads[i])), "warm-up")
            served.predict(prepared[i][np.newaxis])
        for i in range(n):
            k = i % len(uploads)
            start = time.perf_counter()
            served.predict(prepared[k][np.newaxis])
            raw_ms.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            response = client.post(url, files=tile_upload(f"tile_{k}.tif", uploads[k]))
            http_ms.append((time.perf_counter() - start) * 1000)
            check_answer(response, "predict")
        answered = client.post(url, files=tile_upload("tile_0.tif", uploads[0]))
    check_answer(answered, "predict")
    got = answered.json()["predictions"][0]["probabilities"]
    want = dict(zip(served.classes, served.predict(prepared[0][np.newaxis])[0], strict=True))
    return {
        "requests": n,
        "raw": _latency(raw_ms),
        "http": _latency(http_ms),
        "p50_extra_ms": float(np.median(http_ms) - np.median(raw_ms)),
        "max_abs_probability_difference": float(max(abs(got[c] - want[c]) for c in served.classes)),
    }


def _latency(ms: list[float]) -> dict:
    p50, p99 = np.percentile(ms, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "mean_ms": float(np.mean(ms))}


# ---------------------------------------------------------------- 2. concurrent clients


def concurrent_http(server, model, uploads, clients: int, per_client: int, warmup=2, per_request=1):
    """`clients` closed-loop clients in a `bench/loadgen.py` subprocess, each sending
    `per_client` requests of `per_request` tiles after `warmup` untimed ones."""
    requests = []
    for first in range(0, len(uploads) * per_request, per_request):
        tiles = [(k, uploads[k % len(uploads)]) for k in range(first, first + per_request)]
        requests.append([[f"tile_{k}.tif", base64.b64encode(data).decode()] for k, data in tiles])
    spec = server.log_path.with_name(f"requests-{per_request}.json")
    spec.write_text(json.dumps({"path": f"/v1/models/{model['id']}/predict", "requests": requests}))
    command = [sys.executable, str(REPO / "bench" / "loadgen.py"), server.base_url, str(spec)]
    command += ["--clients", str(clients), "--per-client", str(per_client), "--warmup", str(warmup)]
    server_cpu = server.cpu_seconds()
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"bench/loadgen.py failed (rc={run.returncode}):\n{run.stderr[-3000:]}")
    result = json.loads(run.stdout)
    # Server CPU over warm-up and timed requests alike: per tile, the warm-up changes little.
    tiles = clients * (per_client + warmup) * per_request
    return {
        "seconds": result["seconds"],
        "tiles_per_second": clients * per_client * per_request / result["seconds"],
        "latency": _latency(result["latencies_ms"]),
        "server_cpu_ms_per_tile": (server.cpu_seconds() - server_cpu) * 1000 / tiles,
        "client_cpu_ms_per_tile": result["cpu_seconds"]
        * 1000
        / (clients * per_client * per_request),
        # The last answer to each distinct request, for checking against the raw path.
        "answers": {int(k): json.loads(body) for k, body in result["answers"].items()},
    }


def raw_batched(served: ServedModel, tiles: np.ndarray, batch: int) -> dict:
    for size in {batch, len(tiles) % batch} - {0}:
        served.predict(tiles[:size])
    cpu, start = time.process_time(), time.perf_counter()
    for first in range(0, len(tiles), batch):
        served.predict(tiles[first : first + batch])
    return _rate(len(tiles), time.perf_counter() - start, time.process_time() - cpu)


def raw_keras(served: ServedModel, tiles: np.ndarray, batch: int) -> dict:
    served.keras_model.predict(tiles[: 2 * batch], batch_size=batch, verbose=0)
    cpu, start = time.process_time(), time.perf_counter()
    served.keras_model.predict(tiles, batch_size=batch, verbose=0)
    return _rate(len(tiles), time.perf_counter() - start, time.process_time() - cpu)


def _rate(tiles: int, seconds: float, cpu_seconds: float) -> dict:
    return {
        "seconds": seconds,
        "tiles_per_second": tiles / seconds,
        "cpu_ms_per_tile": cpu_seconds * 1000 / tiles,
    }


def measure_concurrent(server, model, served, raw, uploads, prepared, args, max_batch: int) -> dict:
    """Rounds of: the raw model compiled and its keras predict (the baselines), the served
    function without HTTP, the server; medians reported."""
    sent = [
        (c * args.per_client + j) % len(uploads)
        for c in range(args.clients)
        for j in range(args.per_client)
    ]
    tiles = np.stack([prepared[k] for k in sent])
    rounds, worst = [], 0.0
    for i in range(1, args.rounds + 1):
        row = {
            "raw_function": raw_batched(raw, tiles, max_batch),
            "keras_predict": raw_keras(raw, tiles, max_batch),
            "raw_function_clients": raw_batched(raw, tiles, args.clients),
            "served_function": raw_batched(served, tiles, max_batch),
            "http": concurrent_http(server, model, uploads, args.clients, args.per_client),
            "http_grouped": concurrent_http(
                server,
                model,
                uploads,
                args.clients,
                max(1, args.per_client // TILES_PER_REQUEST),
                per_request=TILES_PER_REQUEST,
            ),
        }
        for path, per_request in (("http", 1), ("http_grouped", TILES_PER_REQUEST)):
            answers = row[path].pop("answers")
            worst = max(worst, _answers_differ(answers, raw, prepared, per_request))
        rounds.append(row)
        rates = " / ".join(f"{path} {row[path]['tiles_per_second']:.1f}" for path in row)
        load = os.getloadavg()[0]
        print(f"concurrent round {i}: {rates} tiles/s (load {load:.2f})", flush=True)
    medians = {
        path: statistics.median(r[path]["tiles_per_second"] for r in rounds) for path in rounds[0]
    }
    baseline = max(("raw_function", "keras_predict"), key=medians.get)
    return {
        "clients": args.clients,
        "requests_per_client": args.per_client,
        "tiles": len(tiles),
        "raw_batch": max_batch,
        "rounds": rounds,
        "median_tiles_per_second": medians,
        "baseline": baseline,
        "round_ratios": [
            r["http"]["tiles_per_second"] / r[baseline]["tiles_per_second"] for r in rounds
        ],
        "ratio": medians["http"] / medians[baseline],
        "ratio_at_clients_batch": medians["http"] / medians["raw_function_clients"],
        # HTTP against anyband's own function at the same batch: the serving overhead alone.
        "ratio_to_served_function": medians["http"] / medians["served_function"],
        "tiles_per_request_grouped": TILES_PER_REQUEST,
        "ratio_grouped": medians["http_grouped"] / medians[baseline],
        "max_abs_probability_difference": worst,
    }


def _answers_differ(answers: dict[int, dict], served: ServedModel, prepared, per_request) -> float:
    """Largest difference between each answer and the raw path on its tile; exits if a request
    is answered for tiles other than its own, in its order (no request gets another's rows)."""
    names, rows = [], []
    for k, answer in sorted(answers.items()):
        sent = [f"tile_{k * per_request + i}.tif" for i in range(per_request)]
        got = [prediction["filename"] for prediction in answer["predictions"]]
        if got != sent:
            raise SystemExit(f"request {k} sent {sent} and was answered for {got}")
        for i, prediction in enumerate(answer["predictions"]):
            names.append((k * per_request + i) % len(prepared))
            rows.append([prediction["probabilities"][c] for c in served.classes])
    raw = served.predict(np.stack([prepared[i] for i in names]))
    return float(np.max(np.abs(np.asarray(rows) - raw)))


# ---------------------------------------------------------------- 3. scenes


def write_scene(path: Path, width: int, height: int, seed: int = 2) -> None:
    """A tiled, uncompressed 13-band uint16 GeoTIFF: 64 px patches of random classes (brighter in
    the class's band, as the training tiles), noise, and a strip of nodata."""
    rng = np.random.default_rng(seed)
    block = max(16, min(256, min(width, height) // 16 * 16))
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": BANDS,
        "dtype": "uint16",
        "nodata": NODATA,
        "crs": "EPSG:32633",
        "transform": from_origin(500_000, 5_000_000, 10, 10),
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "BIGTIFF": "IF_SAFER",
    }
    patches = rng.integers(0, len(CLASSES), (-(-height // TILE_SIZE), -(-width // TILE_SIZE)))
    columns = np.arange(width) // TILE_SIZE
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, height, block):
            rows = min(block, height - top)
            pixels = rng.integers(250, 370, (BANDS, rows, width), dtype=np.uint16)
            owner = patches[np.arange(top, top + rows) // TILE_SIZE][:, columns]
            for k in range(len(CLASSES)):
                pixels[k][owner == k] += 600
            if top == 0:
                pixels[:, 40:48, : width // 2] = NODATA
            dst.write(pixels, window=Window(0, top, width, rows))


def window_starts(length: int, tile: int, stride: int) -> list[int]:
    """classify_scene's rule: every `stride` px, the last shifted back to end at the edge."""
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def cut_windows(scene: Path, served: ServedModel) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Every default-stride window of the scene, prepared as classify_scene prepares them (strip
    by strip, `SCENE_BATCH` at a time), in its order, in one float32 array; and their origins."""
    tile_h, tile_w = served.tile_size
    with rasterio.open(scene) as src:
        rows = window_starts(src.height, tile_h, tile_h)
        cols = window_starts(src.width, tile_w, tile_w)
        nodata = served.model_input.nodata if src.nodata is None else src.nodata
        shape = (len(rows) * len(cols), tile_h, tile_w, len(served.model_input.bands))
        windows = np.empty(shape, dtype=np.float32)
        for j, top in enumerate(rows):
            strip = np.moveaxis(src.read(window=Window(0, top, src.width, tile_h)), 0, -1)
            for first in range(0, len(cols), SCENE_BATCH):
                starts = cols[first : first + SCENE_BATCH]
                cut = np.stack([strip[:, left : left + tile_w] for left in starts])
                at = j * len(cols) + first
                windows[at : at + len(starts)] = prepare(cut, served.model_input, nodata)
    return windows, [(top, left) for top in rows for left in cols]


class Timed:
    """A function that counts its calls and the seconds spent inside it."""

    def __init__(self, function):
        self.function, self.calls, self.seconds = function, 0, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        value = self.function(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return value


def run_classify(served: ServedModel, scene: Path, output: Path) -> tuple[float, Timed, Timed]:
    """(seconds, predict, prepare): classify_scene's time, and that spent in its predict and
    `prepare` calls (timed by wrapping the module's `prepare`, which costs microseconds)."""
    from anyband import scenes

    predict, prepared = Timed(served.predict), Timed(scenes.prepare)
    start = time.perf_counter()
    with mock.patch.object(scenes, "prepare", prepared):
        scenes.classify_scene(
            predict,
            scene,
            output,
            model_input=served.model_input,
            classes=served.classes,
            tile_size=served.tile_size,
            batch_size=SCENE_BATCH,
            max_bytes=Settings().max_scene_bytes,
        )
    return time.perf_counter() - start, predict, prepared


def measure_scene(
    served: ServedModel, raw_model: ServedModel, scene: Path, output: Path, size: int, rounds: int
) -> dict:
    """Rounds of the raw path (`raw_model` on pre-cut windows) and classify_scene (`served`), in
    alternating order (raw first in odd rounds, classify_scene first in even ones) so that a
    drift in the machine's load hits both; medians."""
    windows, origins = cut_windows(scene, raw_model)
    raw_model.predict(windows[:SCENE_BATCH])
    raw = np.empty((len(windows), len(served.classes)), dtype=np.float32)

    def raw_path() -> dict:
        start = time.perf_counter()
        for first in range(0, len(windows), SCENE_BATCH):
            batch = windows[first : first + SCENE_BATCH]
            raw[first : first + SCENE_BATCH] = raw_model.predict(batch)
        return {"raw_seconds": time.perf_counter() - start}

    def classify_path() -> dict:
        seconds, predict, prepared = run_classify(served, scene, output)
        return {
            "classify_seconds": seconds,
            "classify_predict_seconds": predict.seconds,
            "classify_predict_calls": predict.calls,
            "classify_prepare_seconds": prepared.seconds,
        }

    results = []
    for i in range(1, rounds + 1):
        row = {}
        for path in (raw_path, classify_path) if i % 2 else (classify_path, raw_path):
            row.update(path())
        results.append(row)
        print(
            f"scene {size} x {size}, round {i}: raw predict {row['raw_seconds']:.1f}s, "
            f"classify_scene {row['classify_seconds']:.1f}s (load {os.getloadavg()[0]:.2f})",
            flush=True,
        )
    median = {key: statistics.median(row[key] for row in results) for key in results[0]}
    median["classify_predict_calls"] = results[0]["classify_predict_calls"]  # the same each round
    return {
        "size": size,
        "windows": len(origins),
        **median,
        "raw_predict_calls": -(-len(origins) // SCENE_BATCH),
        "raw_pixels_per_second": size * size / median["raw_seconds"],
        "classify_pixels_per_second": size * size / median["classify_seconds"],
        "ratio": median["raw_seconds"] / median["classify_seconds"],
        "rounds": results,
        "round_ratios": [row["raw_seconds"] / row["classify_seconds"] for row in results],
        "max_abs_probability_difference": _compare_class_map(output, origins, raw, served),
    }


def _compare_class_map(output: Path, origins, raw: np.ndarray, served: ServedModel) -> float:
    """Largest difference between the class map's probabilities at each window's centre and the
    raw path's for that window (windows whose centre is nodata are skipped)."""
    tile_h, tile_w = served.tile_size
    worst = 0.0
    with rasterio.open(output) as src:
        line, line_top = None, None
        for i, (top, left) in enumerate(origins):
            if top != line_top:
                line = src.read(window=Window(0, top + tile_h // 2, src.width, 1))[:, 0]
                line_top = top
            centre = line[:, left + tile_w // 2]
            if centre[0] != -1:
                worst = max(worst, float(np.max(np.abs(centre[1:] - raw[i]))))
    return worst


# ---------------------------------------------------------------- 3b. the scene task's memory


class RssSampler:
    """Polls a process's RSS on a thread and keeps the peak, and that of its anonymous part (RSS
    less file-backed and shared pages, which reading a file through the page cache can add)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.baseline, self.anon_baseline = self.sample()
        self.peak, self.anon_peak = self.baseline, self.anon_baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int]:
        memory = self.process.memory_info()
        return memory.rss, memory.rss - memory.shared

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss, anon = self.sample()
            except psutil.NoSuchProcess:
                return
            self.peak, self.anon_peak = max(self.peak, rss), max(self.anon_peak, anon)
            time.sleep(SAMPLE_SECONDS)


def child_scene(folder: Path, model_id: str, sha256: str, scene: Path, output: Path) -> None:
    """Runs in the subprocess: load the model, warm it up, say ready, wait for go, classify."""
    served = load_served_model(model_id, folder, sha256)
    # One batch of classify_scene's size first, so TensorFlow's first-call allocations land in
    # the baseline rather than in the scene's figure.
    channels = len(served.model_input.bands)
    served.predict(np.zeros((SCENE_BATCH, *served.tile_size, channels), np.float32))
    print("ready", flush=True)
    sys.stdin.readline()
    seconds, predict, _ = run_classify(served, scene, output)
    print(json.dumps({"seconds": seconds, "predict_seconds": predict.seconds}), flush=True)


def measure_scene_memory(model: dict, folder: Path, scene: Path, root: Path) -> dict:
    command = [sys.executable, __file__, "--child-scene", str(folder), model["id"], model["sha256"]]
    command += [str(scene), str(root / f"classes-{scene.name}")]
    log_path = root / f"{scene.stem}.log"
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
        )
    try:
        for line in child.stdout:  # anything the imports print comes before "ready"
            if line.strip() == "ready":
                break
        # After the model loaded and ran once: the child waits for "go".
        with RssSampler(child.pid) as sampler:
            output, _ = child.communicate("go\n")
    finally:
        if child.poll() is None:
            child.kill()
    if child.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"scene memory: the subprocess failed (rc={child.returncode})\n{tail}")
    result = json.loads(output.strip().splitlines()[-1])
    with rasterio.open(scene) as src:
        width, height = src.width, src.height
    print(f"scene {width} x {height} in a subprocess: {result['seconds']:.1f}s", flush=True)
    return {
        "width": width,
        "height": height,
        "baseline_rss_mb": sampler.baseline / MB,
        "peak_above_baseline_mb": (sampler.peak - sampler.baseline) / MB,
        "anon_peak_above_baseline_mb": (sampler.anon_peak - sampler.anon_baseline) / MB,
        "classify_seconds": result["seconds"],
        "classify_predict_seconds": result["predict_seconds"],
    }


# ---------------------------------------------------------------- --breakdown


def breakdown_single(server, model, served, uploads, settings: Settings, root: Path) -> dict:
    """One tile's steps through the route, each timed alone in this process (p50 ms)."""
    from fastapi.encoders import jsonable_encoder
    from starlette.requests import Request

    from anyband.batching import MicroBatcher
    from anyband.inference import check_raster, prepare_tile
    from anyband.rasters import read_tile
    from service.schemas import PredictionsPublic
    from service.uploads import receive_multipart

    n = 100
    request = httpx.Request("POST", "http://bench/", files=tile_upload("tile.tif", uploads[0]))
    body = request.read()
    headers = [
        (b"content-type", request.headers["content-type"].encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    ms: dict[str, list[float]] = {}

    def timed(name: str, function, *args, **kwargs):
        start = time.perf_counter()
        value = function(*args, **kwargs)
        ms.setdefault(name, []).append((time.perf_counter() - start) * 1000)
        return value

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def route_steps(batcher: MicroBatcher) -> None:
        for _ in range(n):
            scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
            start = time.perf_counter()
            upload = await receive_multipart(
                Request(scope, receive),
                root / "uploads",
                settings.max_upload_bytes,
                in_memory_up_to=settings.predict_in_memory_bytes,
                hash_files=False,
            )
            ms.setdefault("multipart", []).append((time.perf_counter() - start) * 1000)
            uploaded = upload.files_named("files")[0]
            pixels, info = timed(
                "read", read_tile, uploaded.source, max_bytes=settings.max_tile_bytes
            )
            timed("check", check_raster, info, served.model_input, uploaded.filename)
            tile, valid = timed("prepare", prepare_tile, pixels, served.model_input, info.nodata)
            upload.remove()
            timed("raw", served.predict, tile[np.newaxis])
            start = time.perf_counter()
            probabilities = (await batcher.submit(tile[np.newaxis]))[0].tolist()
            ms.setdefault("batcher", []).append((time.perf_counter() - start) * 1000)
            answer = {
                "model_id": model["id"],
                "predictions": [
                    {
                        "filename": uploaded.filename,
                        "label": served.classes[int(np.argmax(probabilities))],
                        "probabilities": dict(zip(served.classes, probabilities, strict=True)),
                        "valid_fraction": valid,
                    }
                ],
            }
            timed(
                "response", lambda a: json.dumps(jsonable_encoder(PredictionsPublic(**a))), answer
            )

    async def with_batcher() -> None:
        # As service.serving builds it: the settings' batch limits and concurrency.
        executor = ThreadPoolExecutor(max_workers=settings.predict_batch_concurrency)
        batcher = MicroBatcher(
            served.predict,
            max_batch=settings.predict_max_batch,
            max_wait_s=settings.predict_batch_wait_ms / 1000,
            concurrency=settings.predict_batch_concurrency,
            executor=executor,
        )
        try:
            await route_steps(batcher)
        finally:
            await batcher.close()
            executor.shutdown()

    asyncio.run(with_batcher())
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        for _ in range(n):
            timed("floor", lambda: check_answer(client.get(f"/v1/models/{model['id']}"), "GET"))
    p50 = {name: float(np.median(values)) for name, values in ms.items()}
    return {
        "p50_ms": {
            "multipart parse, in memory (receive_multipart)": p50["multipart"],
            "read_tile (rasterio open + read of the upload's bytes)": p50["read"],
            "check_raster": p50["check"],
            "prepare": p50["prepare"],
            "micro-batcher above the raw call (wait + executor hop)": p50["batcher"] - p50["raw"],
            "response model + JSON (approximately FastAPI's)": p50["response"],
            "HTTP round trip floor (GET /v1/models/{id})": p50["floor"],
        },
        "raw_predict_p50_ms": p50["raw"],
        "batch_wait_setting_ms": settings.predict_batch_wait_ms,
    }


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid`, from /proc; {} off Linux."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that just ended
        seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return seconds


def breakdown_concurrent(settings, model, served, uploads, prepared, args, root: Path) -> dict:
    """The same load on the same app, with routes that report the model calls it made and its
    threads: batch sizes, and the server's CPU per tile by kind of thread."""
    with Server(settings, root / "server-instrumented.log", instrumented=True) as server:
        concurrent_http(server, model, uploads, args.clients, 2, warmup=0)
        url = f"{server.base_url}/bench/batch-sizes"
        calls_before = len(httpx.get(url).json()[model["id"]])
        pid, total = server.process.pid, server.cpu_seconds()
        before = thread_cpu_seconds(pid)
        result = concurrent_http(server, model, uploads, args.clients, args.per_client, warmup=0)
        after, total = thread_cpu_seconds(pid), server.cpu_seconds() - total
        sizes = httpx.get(url).json()[model["id"]][calls_before:]
        names = {
            int(tid): name
            for tid, name in httpx.get(f"{server.base_url}/bench/threads").json().items()
        }
        # The same clients, the same tiles, fewer requests: what is per request, what per tile.
        calls_before = len(httpx.get(url).json()[model["id"]])
        requests = max(1, args.per_client // TILES_PER_REQUEST)
        grouped = concurrent_http(
            server, model, uploads, args.clients, requests, warmup=0, per_request=TILES_PER_REQUEST
        )
        grouped_sizes = httpx.get(url).json()[model["id"]][calls_before:]
    tiles = args.clients * args.per_client
    groups: Counter[str] = Counter()
    for tid, cpu in after.items():
        name = names.get(tid)
        if tid == pid:
            group = "event loop (HTTP, multipart, routing, JSON)"
        elif name is None:
            group = "TensorFlow's native thread pools"
        elif name.startswith("anyband-inference"):
            group = "inference thread (calls the model)"
        elif name.startswith("AnyIO worker"):
            group = "threadpool (read_tile, check_raster, prepare)"
        else:
            group = "other Python threads"
        groups[group] += (cpu - before.get(tid, 0.0)) * 1000 / tiles
    if total * 1000 / tiles - sum(groups.values()) > 0.05:
        groups["threads that ended meanwhile"] = total * 1000 / tiles - sum(groups.values())
    median_batch = max(1, int(np.median(sizes)))
    at_median = np.stack([prepared[i % len(prepared)] for i in range(median_batch * 32)])
    return {
        "http_tiles_per_second": result["tiles_per_second"],
        "model_calls": len(sizes),
        "mean_batch": float(np.mean(sizes)),
        "median_batch": median_batch,
        "batch_size_histogram": dict(sorted(Counter(sizes).items())),
        "raw_tiles_per_second_at_median_batch": raw_batched(served, at_median, median_batch)[
            "tiles_per_second"
        ],
        "server_cpu_ms_per_tile": total * 1000 / tiles,
        "server_cpu_ms_per_tile_by_thread": dict(groups.most_common()),
        "client_cpu_ms_per_tile": result["client_cpu_ms_per_tile"],
        "grouped": {
            "tiles_per_request": TILES_PER_REQUEST,
            "tiles_per_second": grouped["tiles_per_second"],
            "mean_batch": float(np.mean(grouped_sizes)),
            "server_cpu_ms_per_tile": grouped["server_cpu_ms_per_tile"],
            "client_cpu_ms_per_tile": grouped["client_cpu_ms_per_tile"],
        },
    }


# ---------------------------------------------------------------- report


def print_table(header: list[str], rows: list[list]) -> None:
    """First column left-aligned, the rest right-aligned; floats with the precision given."""
    cells = [header, *[[_cell(value) for value in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        line = row[0].ljust(widths[0]) + "".join(
            f"  {cell:>{width}}" for cell, width in zip(row[1:], widths[1:], strict=True)
        )
        print(line)
        if n == 0:
            print("  ".join("-" * width for width in widths))


def _cell(value) -> str:
    if isinstance(value, tuple):  # (number, format)
        return format(*value)
    return str(value)


def report(setup, single, concurrent, scene, memory, breakdown) -> dict:
    print()
    for key, value in setup.items():
        print(f"{key:<22} {value}")

    print(
        f"\n1. one 64x64x13 tile per request, sequential: {single['requests']} requests after "
        f"{WARMUP_REQUESTS} warm-up, alternating with the raw call"
    )
    rows = []
    for name, key in (
        ("raw Keras model, compiled, batch 1", "raw"),
        ("HTTP POST /v1/models/{id}/predict", "http"),
    ):
        rows.append([name, *((single[key][f"{s}_ms"], ".1f") for s in ("p50", "p99", "mean"))])
    print_table(["path", "p50 ms", "p99 ms", "mean ms"], rows)
    print(
        f"p50 difference: {single['p50_extra_ms']:+.1f} ms; largest probability difference, "
        f"HTTP vs raw: {single['max_abs_probability_difference']:.1e}"
    )

    c = concurrent
    print(
        f"\n2. {c['clients']} concurrent clients x {c['requests_per_client']} one-tile requests "
        f"({c['tiles']} tiles a round), medians over {len(c['rounds'])} round(s)"
    )
    base = c["median_tiles_per_second"][c["baseline"]]
    rows = []
    for name, key in (
        (f"raw Keras model, compiled, batch {c['raw_batch']}", "raw_function"),
        (f"raw keras_model.predict, batch_size {c['raw_batch']}", "keras_predict"),
        (f"raw Keras model, compiled, batch {c['clients']}", "raw_function_clients"),
        (f"ServedModel.predict (served, no HTTP), batch {c['raw_batch']}", "served_function"),
        ("HTTP, one tile per request", "http"),
        (f"HTTP, {c['tiles_per_request_grouped']} tiles per request", "http_grouped"),
    ):
        rate, last = c["median_tiles_per_second"][key], c["rounds"][-1][key]
        if key.startswith("http"):
            latency = [(last["latency"]["p50_ms"], ".0f"), (last["latency"]["p99_ms"], ".0f")]
            cpu = f"{last['server_cpu_ms_per_tile']:.1f} + {last['client_cpu_ms_per_tile']:.1f} client"
        else:
            latency, cpu = ["-", "-"], f"{last['cpu_ms_per_tile']:.1f}"
        rows.append([name, (rate, ".1f"), (rate / base, ".3f"), *latency, cpu])
    print_table(["path", "tiles/s", "ratio", "p50 ms", "p99 ms", "CPU ms/tile"], rows)
    print(
        f"ratio: median tiles/s over the baseline's, {c['baseline']} (the faster batch-"
        f"{c['raw_batch']} raw path); each round's, HTTP: {_ratios(c['round_ratios'])}\n"
        f"over raw batch {c['clients']} (the largest batch {c['clients']} one-tile clients can "
        f"form): {c['ratio_at_clients_batch']:.3f}; over the served function at batch "
        f"{c['raw_batch']} (the serving overhead alone): {c['ratio_to_served_function']:.3f}\n"
        f"raw: the Keras model as saved, in the compiled function anyband serves with; served: "
        f"what the API serves (fold_batch_norm)\nCPU ms/tile (last round): the server "
        f"process's CPU time over the tiles, plus the clients' (bench/loadgen.py, a separate\n"
        f"process on the same cores); raw: this process's. Largest probability difference, "
        f"HTTP answers vs raw: {c['max_abs_probability_difference']:.1e}"
    )

    s = scene
    print(
        f"\n3. classify_scene on a {s['size']} x {s['size']} x {BANDS} uint16 tiled GeoTIFF: "
        f"{s['windows']} windows of {TILE_SIZE} px (stride = tile), batch_size {SCENE_BATCH}"
    )
    rows = [
        [
            "raw Keras model, compiled, pre-cut windows",
            (s["raw_seconds"], ".2f"),
            (s["raw_pixels_per_second"] / 1e6, ".3f"),
            (1.0, ".3f"),
            (s["raw_seconds"], ".2f"),
            s["raw_predict_calls"],
        ],
        [
            "anyband.scenes.classify_scene",
            (s["classify_seconds"], ".2f"),
            (s["classify_pixels_per_second"] / 1e6, ".3f"),
            (s["ratio"], ".3f"),
            (s["classify_predict_seconds"], ".2f"),
            s["classify_predict_calls"],
        ],
    ]
    print_table(["path", "seconds", "Mpx/s", "ratio", "in predict s", "predict calls"], rows)
    outside = s["classify_seconds"] - s["classify_predict_seconds"]
    print(
        f"classify_scene outside predict: {outside:.2f}s, of which prepare "
        f"{s['classify_prepare_seconds']:.2f}s; the rest is strip reads, window stacking, argmax "
        f"and\nthe class-map write. Largest probability difference, class map vs raw: "
        f"{s['max_abs_probability_difference']:.1e}"
    )
    print(
        f"seconds: medians over {len(s['rounds'])} round(s), raw and classify_scene alternating "
        f"which runs first; each round's ratio: {_ratios(s['round_ratios'])}"
    )
    print(
        f"\n   the scene task's memory: classify_scene alone in a subprocess, RSS sampled every "
        f"{SAMPLE_SECONDS * 1000:.0f} ms"
    )
    rows = [
        [
            f"{m['width']} x {m['height']}",
            (m["baseline_rss_mb"], ".0f"),
            (m["peak_above_baseline_mb"], ".1f"),
            (m["anon_peak_above_baseline_mb"], ".1f"),
            (m["classify_seconds"], ".1f"),
        ]
        for m in memory
    ]
    print_table(["scene (width x height)", "baseline MB", "peak MB", "anon MB", "seconds"], rows)
    print(
        "baseline: RSS after the model loaded and ran one batch of 64; peak, anon: above it (a "
        "scene is mapped in chunks of columns: neither should grow with its width or height)"
    )

    if breakdown:
        _print_breakdown(breakdown, single)

    met = {
        "single_p50_extra_ms": single["p50_extra_ms"] <= TARGET_P50_EXTRA_MS,
        "concurrent_ratio": c["ratio"] >= TARGET_CONCURRENT_RATIO,
        "scene_ratio": s["ratio"] >= TARGET_SCENE_RATIO,
    }
    peaks = ", ".join(
        f"{m['peak_above_baseline_mb']:.0f} MB at {m['width']} x {m['height']}" for m in memory
    )
    print("\nSUMMARY")
    print(
        f"one tile, HTTP p50 - raw p50: {single['p50_extra_ms']:+.1f} ms "
        f"(target <= {TARGET_P50_EXTRA_MS:.0f} ms: {_met(met['single_p50_extra_ms'])})"
    )
    print(
        f"{c['clients']} clients, tiles/s over raw {c['baseline']}: {c['ratio']:.2f} "
        f"(target >= {TARGET_CONCURRENT_RATIO}: {_met(met['concurrent_ratio'])}); over raw "
        f"batch {c['clients']}: {c['ratio_at_clients_batch']:.2f}; with "
        f"{c['tiles_per_request_grouped']} tiles per request: {c['ratio_grouped']:.2f}; "
        f"over the served function: {c['ratio_to_served_function']:.2f}"
    )
    print(
        f"classify_scene, pixels/s over raw predict: {s['ratio']:.2f} "
        f"(target >= {TARGET_SCENE_RATIO}: {_met(met['scene_ratio'])})"
    )
    print(f"scene task, peak RSS above baseline: {peaks}")
    return {
        "setup": setup,
        "single_tile": single,
        "concurrent": concurrent,
        "scene": scene,
        "scene_memory": memory,
        "breakdown": breakdown or None,
        "targets": {
            "single_p50_extra_ms": TARGET_P50_EXTRA_MS,
            "concurrent_ratio": TARGET_CONCURRENT_RATIO,
            "scene_ratio": TARGET_SCENE_RATIO,
        },
        "targets_met": met,
    }


def _print_breakdown(breakdown: dict, single: dict) -> None:
    if "single" in breakdown:
        b = breakdown["single"]
        print("\nbreakdown 1: one tile's steps through the route, each timed alone in this process")
        rows = [[name, (value, ".2f")] for name, value in b["p50_ms"].items()]
        rows.append(["sum", (sum(b["p50_ms"].values()), ".2f")])
        rows.append(["measured: HTTP p50 - raw p50", (single["p50_extra_ms"], ".2f")])
        print_table(["step", "p50 ms"], rows)
        print(
            f"predict_batch_wait_ms = {b['batch_wait_setting_ms']:g}: a lone request waits that "
            f"long for company before its batch runs"
        )
    if "concurrent" in breakdown:
        b = breakdown["concurrent"]
        print(
            "\nbreakdown 2: the same concurrent load on the same app, reporting its model calls "
            "and threads"
        )
        print(
            f"{b['http_tiles_per_second']:.1f} tiles/s in {b['model_calls']} model calls: mean "
            f"batch {b['mean_batch']:.1f}, median {b['median_batch']}; ServedModel.predict "
            f"at batch {b['median_batch']}: {b['raw_tiles_per_second_at_median_batch']:.1f} "
            f"tiles/s\nbatch sizes (size: calls): {b['batch_size_histogram']}"
        )
        rows = [
            [name, (value, ".2f")] for name, value in b["server_cpu_ms_per_tile_by_thread"].items()
        ]
        rows.append(["server process, all threads", (b["server_cpu_ms_per_tile"], ".2f")])
        rows.append(["the clients (bench/loadgen.py)", (b["client_cpu_ms_per_tile"], ".2f")])
        print_table(["server CPU per tile, by thread", "ms"], rows)
        g = b["grouped"]
        print(
            f"the same clients sending {g['tiles_per_request']} tiles per request: "
            f"{g['tiles_per_second']:.1f} tiles/s, mean batch {g['mean_batch']:.1f}, server CPU "
            f"{g['server_cpu_ms_per_tile']:.2f} ms/tile (+ {g['client_cpu_ms_per_tile']:.2f} client)"
        )


def _ratios(values: list[float]) -> str:
    return " ".join(f"{value:.3f}" for value in values)


def _met(met: bool) -> str:
    return "met" if met else "NOT met"


# ---------------------------------------------------------------- run


def run(args: argparse.Namespace) -> None:
    import tensorflow as tf

    args.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="anyband-bench-predict-", dir=args.workdir))
    load_before = os.getloadavg()[0]
    print(
        f"{os.cpu_count()} CPUs, load average {load_before:.2f} (1 min) at start: other "
        f"processes on this machine slow whichever path runs beside them",
        flush=True,
    )
    try:
        start = time.perf_counter()
        settings, model = train_model(root)
        print(
            f"model {model['id']}: trained by a job in {time.perf_counter() - start:.0f}s",
            flush=True,
        )
        folder = model_dir(settings.data_dir, model["id"])
        # As the API serves it (BatchNormalizations folded, by default), and the raw baseline:
        # the plain Keras model as saved, in the same compiled function.
        served = load_served_model(
            model["id"], folder, model["sha256"], fold_batch_norm=settings.fold_batch_norm
        )
        raw = load_served_model(model["id"], folder, model["sha256"], fold_batch_norm=False)
        tiles = request_tiles()
        uploads = [tile_bytes(tile, nodata=NODATA) for tile in tiles]
        prepared = [prepare(tile, served.model_input, NODATA) for tile in tiles]

        breakdown: dict = {}
        with Server(settings, root / "server.log") as server:
            single = measure_single(server, model, raw, uploads, prepared, args.requests)
            print(
                f"one tile: p50 raw {single['raw']['p50_ms']:.1f} ms, HTTP "
                f"{single['http']['p50_ms']:.1f} ms",
                flush=True,
            )
            max_batch = settings.predict_max_batch
            concurrent = measure_concurrent(
                server, model, served, raw, uploads, prepared, args, max_batch
            )
            if args.breakdown:
                breakdown["single"] = breakdown_single(
                    server, model, served, uploads, settings, root
                )
        if args.breakdown:
            breakdown["concurrent"] = breakdown_concurrent(
                settings, model, served, uploads, prepared, args, root
            )

        # Square scenes, a wide one and a tall one: classify_scene maps a scene in chunks of
        # columns, so what it holds should grow with neither dimension.
        small, large = sorted(args.memory_sizes)
        shapes = [(small, small), (large, small), (small, large), (large, large)]
        scenes = {shape: root / f"scene-{shape[0]}x{shape[1]}.tif" for shape in shapes}
        scenes.setdefault((args.scene_size,) * 2, root / f"scene-{args.scene_size}.tif")
        for (width, height), path in scenes.items():
            write_scene(path, width, height)
        os.sync()  # so writing back fresh pages does not run during the timed reads
        scene = measure_scene(
            served,
            raw,
            scenes[(args.scene_size,) * 2],
            root / "classes.tif",
            args.scene_size,
            args.rounds,
        )
        memory = [measure_scene_memory(model, folder, scenes[shape], root) for shape in shapes]
        setup = {
            "CPUs": os.cpu_count(),
            # Other work on the machine slows whichever path runs beside it: rerun if this is high.
            "load average (1 min)": f"{load_before:.2f} at start, {os.getloadavg()[0]:.2f} at end",
            "model": f"ResNet50, {BANDS} bands, {len(served.classes)} classes, "
            f"{served.tile_size[0]}x{served.tile_size[1]} tiles (job: weights none, 1 epoch)",
            "serving settings": f"predict_max_batch {settings.predict_max_batch}, "
            f"predict_batch_wait_ms {settings.predict_batch_wait_ms:g}, "
            f"predict_batch_hold_ms {settings.predict_batch_hold_ms:g}, "
            f"predict_batch_concurrency {settings.predict_batch_concurrency}, "
            f"fold_batch_norm {settings.fold_batch_norm} ({served.folded_batch_norms} folded)",
            "request tiles": f"{len(uploads)} distinct uint16 GeoTIFFs, deflate, "
            f"{np.mean([len(u) for u in uploads]) / 1024:.0f} KB each",
            "TF": f"{tf.__version__} on {', '.join(d.name for d in tf.config.list_logical_devices())}",
            "python": platform.python_version(),
            "total time": f"{time.perf_counter() - start:.0f}s",
        }
        results = report(setup, single, concurrent, scene, memory, breakdown)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")
            print(f"wrote {args.json}")
        worst = max(
            single["max_abs_probability_difference"],
            concurrent["max_abs_probability_difference"],
            scene["max_abs_probability_difference"],
        )
        if worst > 1e-3:
            raise SystemExit(f"the served paths and the raw path disagree by up to {worst:.2e}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--requests", type=int, help=f"sequential requests (default {FULL['requests']})")
    add("--clients", type=int, default=16, help="concurrent clients")
    add(
        "--per-client", type=int, help=f"requests per client a round (default {FULL['per_client']})"
    )
    add(
        "--rounds", type=int, help=f"concurrent rounds, medians reported (default {FULL['rounds']})"
    )
    add(
        "--scene-size", type=int, help=f"side of the timed scene, px (default {FULL['scene_size']})"
    )
    add(
        "--memory-sizes",
        type=int,
        nargs=2,
        help="scene sides for the memory figure (default 1024 4096)",
    )
    add(
        "--quick",
        action="store_true",
        help="a smoke run: 50 requests, 8 per client, 1 round, a 1024 px scene, memory sizes 512 2048",
    )
    add("--breakdown", action="store_true", help="then measure where the server's time goes")
    add(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="parent of the run's folder",
    )
    add("--keep", action="store_true", help="keep the generated files")
    add("--json", type=Path, help="also write the figures to this file")
    add("--child-api", type=int, help=argparse.SUPPRESS)
    add("--child-scene", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_api:
        child_api(args.child_api)
    elif args.child_scene:
        folder, model_id, sha256, scene, output = args.child_scene
        child_scene(Path(folder), model_id, sha256, Path(scene), Path(output))
    else:
        for key, value in (QUICK if args.quick else FULL).items():
            if getattr(args, key) is None:
                setattr(args, key, value)
        run(args)


if __name__ == "__main__":
    main()
