"""Benchmark: classify_scene on a striped and a tiled scene, against plain rasterio and Keras.

    .venv/bin/python bench/striped_scene.py [--width 8192] [--height 1024] [--rounds 3]
        [--workdir /tmp] [--keep]

GDAL writes striped GeoTIFFs by default, so many users' scenes are striped: each block is a
whole row (or a few), and reading any column range decodes the full width. The bench writes one
13-band uint16 deflate scene twice, striped and tiled (256 px blocks), and maps each with
`anyband.scenes.classify_scene` (64 px windows, stride 64, batches of 64). The model is a tiny
Keras model (mean of each band, then softmax), so that reading and decoding the scene, not the
model, is what is measured: with ResNet50 the model's time is added to both paths alike.

The raw baseline, measured in the same run on the same file: plain rasterio reads the scene in
full-width strips of 64 rows (each row decoded once), the windows are cut from each strip and
`prepare`d, and the same Keras model is called on them 64 at a time. No class map is written.

It prints seconds, Mpx/s and classify_scene's ratio to the baseline (rounds alternate which path
runs first; medians reported). It never asserts speed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# `python bench/striped_scene.py` puts bench/ first on the path, not the repo: tests/ lives there.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from anyband.inference import ModelInput, prepare
from anyband.scenes import classify_scene
from tests.test_scenes import band_model

BANDS = 13
TILE = 64
BATCH = 64
CLASSES = ("a", "b", "c")


def write_scene(path: Path, width: int, height: int, tiled: bool) -> None:
    rng = np.random.default_rng(0)
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": BANDS,
        "dtype": "uint16",
        "compress": "deflate",
        "crs": "EPSG:32633",
        "transform": from_origin(500_000, 5_000_000, 10, 10),
        **({"tiled": True, "blockxsize": 256, "blockysize": 256} if tiled else {}),
    }
    with rasterio.open(path, "w", **profile) as out:
        for top in range(0, height, 256):
            rows = min(256, height - top)
            pixels = rng.integers(1, 1000, (BANDS, rows, width), dtype=np.uint16)
            out.write(pixels, window=Window(0, top, width, rows))


def raw(model, path: Path, inputs: ModelInput) -> float:
    """Plain rasterio, full-width strips of TILE rows, windows cut, prepared, predicted."""
    start = time.perf_counter()
    with rasterio.open(path) as source:
        width, height = source.width, source.height
        queue = []
        for top in range(0, height - TILE + 1, TILE):
            strip = np.moveaxis(source.read(window=Window(0, top, width, TILE)), 0, -1)
            queue += [strip[:, left : left + TILE] for left in range(0, width - TILE + 1, TILE)]
            while len(queue) >= BATCH:
                batch, queue = queue[:BATCH], queue[BATCH:]
                np.asarray(model(prepare(np.stack(batch), inputs), training=False))
        if queue:
            np.asarray(model(prepare(np.stack(queue), inputs), training=False))
    return time.perf_counter() - start


def served(model, path: Path, inputs: ModelInput, output: Path) -> float:
    start = time.perf_counter()
    classify_scene(
        lambda windows: np.asarray(model(windows, training=False)),
        path,
        output,
        model_input=inputs,
        classes=CLASSES,
        tile_size=(TILE, TILE),
        batch_size=BATCH,
        max_bytes=2**40,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=8192)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="anyband-bench-striped-", dir=args.workdir))
    try:
        model = band_model(BANDS, len(CLASSES), scale=0.01)  # mean of each band, softmax
        inputs = ModelInput(BANDS, tuple(range(1, BANDS + 1)), tuple([500.0] * BANDS))
        rows = []
        for layout in ("striped", "tiled"):
            path = root / f"{layout}.tif"
            write_scene(path, args.width, args.height, tiled=layout == "tiled")
            served(model, path, inputs, root / "warm-up.tif")  # traces the model
            times = {"raw": [], "served": []}
            for i in range(args.rounds):
                order = ("raw", "served") if i % 2 == 0 else ("served", "raw")
                for path_name in order:
                    if path_name == "raw":
                        times["raw"].append(raw(model, path, inputs))
                    else:
                        times["served"].append(served(model, path, inputs, root / "out.tif"))
            median = {k: statistics.median(v) for k, v in times.items()}
            rows.append((layout, median["raw"], median["served"]))
            print(
                f"{layout}: raw {median['raw']:.2f} s, classify_scene {median['served']:.2f} s "
                f"(rounds {' '.join(f'{r / s:.2f}' for r, s in zip(*times.values(), strict=True))})",
                flush=True,
            )
        mpx = args.width * args.height / 1e6
        print(
            f"\n{args.width} x {args.height} x {BANDS} uint16 deflate, {TILE} px windows, "
            f"stride {TILE}, batch {BATCH}, tiny model; medians of {args.rounds} round(s)"
        )
        print(f"{'scene':8}  {'raw s':>6}  {'served s':>8}  {'raw Mpx/s':>9}  {'Mpx/s':>6}  ratio")
        for layout, raw_s, served_s in rows:
            print(
                f"{layout:8}  {raw_s:6.2f}  {served_s:8.2f}  {mpx / raw_s:9.2f}  "
                f"{mpx / served_s:6.2f}  {raw_s / served_s:5.2f}"
            )
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
