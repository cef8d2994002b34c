"""Benchmark: dataset ingest (library and server) against a raw rasterio read of the same tiles.

    .venv/bin/python bench/ingest.py [--gb 1.0] [--workdir /tmp] [--keep] [--save]

One run generates a dataset of 13-band uint16 64x64 GeoTIFFs, zips it, then measures:
raw rasterio reads of the extracted tiles (the baseline), `ingest_dataset_zip` in a subprocess,
and `POST /v1/datasets` against `anyband api`. It prints throughput and memory as ratios
against the baseline and the 300 MB memory budget, and exits non-zero if an ingest fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

try:
    import httpx
    import psutil
except ImportError as error:
    sys.exit(
        f"bench/ingest.py needs httpx and psutil: .venv/bin/pip install httpx psutil ({error})"
    )

from api_process import free_port, wait_for_health

MB = 2**20  # binary units, as anyband.settings counts its limits
GB = 2**30
# The project's target: ingesting a dataset of any size stays within this much extra RSS.
MEMORY_BUDGET_MB = 300
BANDS = 13
TILE_SIZE = 64
CLASSES = ("cropland", "forest", "urban", "water")
NODATA = 0
# Every tile declares NODATA; one in NODATA_EVERY also has nodata pixels in it.
NODATA_EVERY = 7
SAMPLE_SECONDS = 0.02
REPO = Path(__file__).resolve().parent.parent
RESULTS_FILE = REPO / "bench" / "results" / "ingest.json"


@dataclass
class Measurement:
    path: str
    seconds: float
    tiles_per_second: float
    # None for the raw baseline, which runs in this process and keeps nothing.
    peak_above_baseline_mb: float | None = None
    anon_peak_above_baseline_mb: float | None = None
    # The kernel's high-water mark (VmHWM) above the same baseline: catches a spike shorter than
    # the sampling interval, but also counts anything before the baseline (imports, startup).
    high_water_above_baseline_mb: float | None = None


class RssSampler:
    """Polls a process's RSS (optionally with its children's) on a thread and keeps the peaks.

    RSS counts file pages mapped in (a memmap being written) as well as the heap, so the
    anonymous part (RSS less file-backed and shared pages) is kept too: it says which is which.
    """

    def __init__(self, pid: int, include_children: bool = False) -> None:
        self.process = psutil.Process(pid)
        self.include_children = include_children
        self.baseline, self.anon_baseline = self.sample()
        self.peak, self.anon_peak = self.baseline, self.anon_baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int]:
        """(RSS, anonymous RSS) in bytes, summed over the process and its children if asked."""
        processes = [self.process]
        if self.include_children:
            processes += self.process.children(recursive=True)
        rss = anon = 0
        for process in processes:
            # A child may exit between listing and reading.
            with contextlib.suppress(psutil.NoSuchProcess):
                memory = process.memory_info()
                rss += memory.rss
                anon += memory.rss - memory.shared
        return rss, anon

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_above_baseline_mb(self) -> float:
        return (self.peak - self.baseline) / MB

    @property
    def anon_peak_above_baseline_mb(self) -> float:
        return (self.anon_peak - self.anon_baseline) / MB

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss, anon = self.sample()
            except psutil.NoSuchProcess:
                return
            self.peak, self.anon_peak = max(self.peak, rss), max(self.anon_peak, anon)
            time.sleep(SAMPLE_SECONDS)


def high_water_mark(pid: int) -> int:
    """Peak RSS in bytes over the process's life so far (Linux VmHWM); 0 where unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def generate_tiles(tiles_dir: Path, target_bytes: int, seed: int = 0) -> list[Path]:
    """Write tiles round-robin over CLASSES until they take `target_bytes` on disk."""
    rng = np.random.default_rng(seed)
    shape = (BANDS, TILE_SIZE, TILE_SIZE)
    # One base image per class; each tile adds a little noise so no two files are identical.
    bases = {name: rng.integers(1, 10_000, shape, dtype=np.uint16) for name in CLASSES}
    pixels = np.empty(shape, dtype=np.uint16)
    profile = {
        "driver": "GTiff",
        "width": TILE_SIZE,
        "height": TILE_SIZE,
        "count": BANDS,
        "dtype": "uint16",
        "nodata": NODATA,
        "crs": CRS.from_epsg(32633),
        "transform": from_origin(500_000, 4_000_000, 10, 10),
    }
    for name in CLASSES:
        (tiles_dir / name).mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    written = 0
    while written < target_bytes:
        name = CLASSES[len(paths) % len(CLASSES)]
        np.add(bases[name], rng.integers(0, 256, shape, dtype=np.uint16), out=pixels)
        if len(paths) % NODATA_EVERY == 0:
            row = rng.integers(0, TILE_SIZE - 8)
            pixels[:, row : row + 8, :] = NODATA  # a strip of missing data, on every band
        path = tiles_dir / name / f"tile_{len(paths):06d}.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(pixels)
        paths.append(path)
        written += path.stat().st_size
    return paths


def zip_tiles(paths: list[Path], tiles_dir: Path, zip_path: Path) -> None:
    # Stored, not deflated: random pixels do not compress, and deflating would time the zipper.
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in paths:
            archive.write(path, path.relative_to(tiles_dir).as_posix())


def measure_raw_rasterio(paths: list[Path]) -> Measurement:
    """The baseline: open each extracted tile and read all its bands, nothing else."""
    # Without this GDAL lists the tile's folder on every open, looking for sidecar files: with
    # thousands of tiles per folder that halves the baseline. anyband's reader sets it too.
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        start = time.perf_counter()
        for path in paths:
            with rasterio.open(path) as src:
                src.read()
        seconds = time.perf_counter() - start
    return Measurement("raw rasterio read", seconds, len(paths) / seconds)


def child_ingest(zip_path: Path, dataset_dir: Path) -> None:
    """Runs in the subprocess: import, say ready, wait for go, ingest, print a JSON result."""
    from anyband.datasets import ingest_dataset_zip

    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    summary = ingest_dataset_zip(zip_path, dataset_dir)
    seconds = time.perf_counter() - start
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    result = {"seconds": seconds, "num_tiles": summary.num_tiles, "max_rss": max_rss}
    print(json.dumps(result), flush=True)


def measure_library(
    zip_path: Path, dataset_dir: Path, log_path: Path, num_tiles: int
) -> Measurement:
    """`ingest_dataset_zip` in its own process, so its RSS holds nothing but the ingest."""
    command = [sys.executable, __file__, "--child-ingest", str(zip_path), str(dataset_dir)]
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
        )
    try:
        for line in child.stdout:  # anything the imports print comes before "ready"
            if line.strip() == "ready":
                break
        else:
            raise SystemExit(
                f"library ingest: the subprocess exited before starting (rc={child.wait()})"
            )
        sampler = RssSampler(child.pid)  # after imports, before the ingest: the child waits for us
        sampler.start()
        output, _ = child.communicate("go\n")
        sampler.stop()
    finally:
        if child.poll() is None:
            child.kill()
    if child.returncode != 0:
        raise SystemExit(f"library ingest failed (rc={child.returncode})\n{_log_tail(log_path)}")
    result = json.loads(output.strip().splitlines()[-1])
    if result["num_tiles"] != num_tiles:
        raise SystemExit(
            f"library ingest: expected num_tiles={num_tiles}, got {result['num_tiles']}"
        )
    return Measurement(
        "library ingest_dataset_zip",
        result["seconds"],
        num_tiles / result["seconds"],
        sampler.peak_above_baseline_mb,
        sampler.anon_peak_above_baseline_mb,
        (result["max_rss"] - sampler.baseline) / MB,
    )


def _log_tail(log_path: Path, chars: int = 3000) -> str:
    return f"--- {log_path.name} (tail) ---\n{log_path.read_text(errors='replace')[-chars:]}"


def measure_server(zip_path: Path, data_dir: Path, log_path: Path, num_tiles: int) -> Measurement:
    """Upload the zip to a fresh `anyband api` and time the request until its 201 answer."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    limit = str(2 * zip_path.stat().st_size + GB)
    env = {
        **os.environ,
        "ANYBAND_DATA_DIR": str(data_dir),
        "ANYBAND_DATABASE_URL": "",  # SQLite inside data_dir, whatever the caller's shell says
        "ANYBAND_API_KEYS": "",
        "ANYBAND_MAX_UPLOAD_BYTES": limit,
        "ANYBAND_MAX_DATASET_BYTES": limit,
    }
    command = [str(Path(sys.executable).parent / "anyband"), "api", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning"]
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_health(base_url, server)
        sampler = RssSampler(server.pid, include_children=True)
        sampler.start()
        start = time.perf_counter()
        with zip_path.open("rb") as handle:
            # A file handle: httpx streams it in chunks, so this process never holds the zip.
            response = httpx.post(
                f"{base_url}/v1/datasets",
                files={"file": (zip_path.name, handle, "application/zip")},
                data={"name": "bench-ingest"},
                timeout=None,
            )
        seconds = time.perf_counter() - start
        sampler.stop()
        high_water = high_water_mark(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    if response.status_code != 201:
        raise SystemExit(
            f"server ingest: expected 201, got {response.status_code}: {response.text[:2000]}\n"
            f"{_log_tail(log_path)}"
        )
    answered = response.json().get("num_tiles")
    if answered != num_tiles:
        raise SystemExit(f"server ingest: expected num_tiles={num_tiles}, got {answered}")
    return Measurement(
        "server POST /v1/datasets",
        seconds,
        num_tiles / seconds,
        sampler.peak_above_baseline_mb,
        sampler.anon_peak_above_baseline_mb,
        (high_water - sampler.baseline) / MB if high_water else None,
    )


def directory_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def report(dataset: dict, measurements: list[Measurement]) -> dict:
    raw, library, server = measurements
    ratios = {
        "dataset_gb": dataset["tiles_bytes"] / GB,
        "ingest_vs_rasterio_throughput": library.tiles_per_second / raw.tiles_per_second,
        "server_vs_rasterio_throughput": server.tiles_per_second / raw.tiles_per_second,
        "library_peak_memory_above_baseline_MB": library.peak_above_baseline_mb,
        "server_peak_memory_above_baseline_MB": server.peak_above_baseline_mb,
        "library_memory_ratio": library.peak_above_baseline_mb / MEMORY_BUDGET_MB,
        "server_memory_ratio": server.peak_above_baseline_mb / MEMORY_BUDGET_MB,
    }
    columns = ("seconds", "tiles/s", "peak MB", "anon MB", "VmHWM MB")
    print(f"\n{'path':<28}" + "".join(f"{column:>10}" for column in columns))
    print("-" * 28 + " ---------" * len(columns))
    for row in measurements:
        values = (
            f"{row.seconds:.2f}",
            f"{row.tiles_per_second:.0f}",
            _optional(row.peak_above_baseline_mb),
            _optional(row.anon_peak_above_baseline_mb),
            _optional(row.high_water_above_baseline_mb),
        )
        print(f"{row.path:<28}" + "".join(f"{value:>10}" for value in values))
    print(
        "peak MB: RSS sampled every 20 ms, above the RSS just before the ingest started; "
        "anon MB: the same\nwithout file-backed pages; VmHWM MB: the kernel's peak RSS above "
        "that baseline (an upper bound)\n"
    )
    width = max(len(key) for key in ratios)
    for key, value in ratios.items():
        print(f"{key:<{width}} = {value:.3f}")
    passed = max(ratios["library_memory_ratio"], ratios["server_memory_ratio"]) < 1.0
    print(f"memory target (< {MEMORY_BUDGET_MB} MB above baseline): {'PASS' if passed else 'FAIL'}")
    return {
        "dataset": dataset,
        "measurements": [asdict(row) for row in measurements],
        "ratios": ratios,
        "memory_budget_mb": MEMORY_BUDGET_MB,
        "memory_target_passed": passed,
    }


def _optional(value_mb: float | None) -> str:
    return "-" if value_mb is None else f"{value_mb:.1f}"


def run(gb: float, workdir: Path, keep: bool, save: bool) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="anyband-bench-ingest-", dir=workdir))
    try:
        tiles_dir, zip_path = root / "tiles", root / "dataset.zip"
        start = time.perf_counter()
        paths = generate_tiles(tiles_dir, int(gb * GB))
        zip_tiles(paths, tiles_dir, zip_path)
        os.sync()  # so writing back 2 GB of fresh pages does not run during the timed reads
        dataset = {
            "num_tiles": len(paths),
            "bands": BANDS,
            "tile_size": TILE_SIZE,
            "dtype": "uint16",
            "classes": len(CLASSES),
            "tiles_bytes": directory_bytes(tiles_dir),
            "zip_bytes": zip_path.stat().st_size,
        }
        print(
            f"dataset: {len(paths)} tiles of {BANDS} x {TILE_SIZE} x {TILE_SIZE} uint16 in "
            f"{len(CLASSES)} classes; {dataset['tiles_bytes'] / GB:.3f} GB of .tif on disk, "
            f"zip {dataset['zip_bytes'] / GB:.3f} GB (written in {time.perf_counter() - start:.1f}s) "
            f"under {root}"
        )
        measurements = [measure_raw_rasterio(paths)]
        print(f"raw rasterio read: {measurements[0].seconds:.1f}s", flush=True)
        library_dir = root / "library-dataset"
        measurements.append(
            measure_library(zip_path, library_dir, root / "library.log", len(paths))
        )
        print(f"library ingest: {measurements[1].seconds:.1f}s", flush=True)
        server_data = root / "server-data"
        measurements.append(measure_server(zip_path, server_data, root / "server.log", len(paths)))
        print(f"server ingest: {measurements[2].seconds:.1f}s", flush=True)
        results = report(dataset, measurements)
        if save:
            RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
            RESULTS_FILE.write_text(json.dumps(results, indent=2) + "\n")
            print(f"saved {RESULTS_FILE.relative_to(REPO)}")
    finally:
        if keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="dataset size on disk, GiB")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="parent of the run's folder",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument(
        "--save", action="store_true", help=f"write {RESULTS_FILE.relative_to(REPO)}"
    )
    parser.add_argument("--child-ingest", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_ingest:
        child_ingest(*args.child_ingest)
    else:
        run(args.gb, args.workdir, args.keep, args.save)


if __name__ == "__main__":
    main()
