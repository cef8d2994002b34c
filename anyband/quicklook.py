"""A scene's class map as a picture: each class in its own colour, with its share in the legend."""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from anyband.artifacts import write_atomic

if TYPE_CHECKING:
    from anyband.scenes import SceneResult

NODATA_COLOR = (0.85, 0.85, 0.85, 1.0)


def class_colors(classes: int) -> np.ndarray:
    """(classes, 4) RGBA in [0, 1]: matplotlib's qualitative tab10 or tab20 while they have
    enough colours, else evenly spaced along turbo."""
    if classes < 1:
        raise ValueError(f"classes must be at least 1. Received: classes={classes}")
    if classes <= 10:
        return np.asarray(matplotlib.colormaps["tab10"].colors[:classes], dtype=float)
    if classes <= 20:
        return np.asarray(matplotlib.colormaps["tab20"].colors[:classes], dtype=float)
    return matplotlib.colormaps["turbo"](np.linspace(0.0, 1.0, classes))[:, :3]


def class_map_rgba(preview: np.ndarray, classes: int) -> np.ndarray:
    """(H, W) class indices, -1 for nodata -> (H, W, 4) RGBA in [0, 1]."""
    palette = np.vstack([NODATA_COLOR, np.column_stack([class_colors(classes), np.ones(classes)])])
    return palette[preview.astype(np.intp) + 1]


def plot_class_map(result: SceneResult, path: str | os.PathLike, *, title: str) -> None:
    """The preview of `result` (from `classify_scene`) as a PNG: drawn in the scene's own
    coordinates when it is georeferenced (pixel columns and rows otherwise), with a legend of
    each class's share of the valid pixels and the share of nodata."""
    if result.preview is None or result.class_pixels is None:
        raise ValueError("result holds no preview: it was not made by classify_scene")
    classes = list(result.classes)
    aspect = result.height / result.width
    figure = Figure(figsize=(9.0, min(max(7.0 * aspect, 3.0), 11.0)), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    extent, units = (0, result.width, result.height, 0), "px"
    if result.transform is not None and result.transform[1] == result.transform[3] == 0:
        a, _, c, _, e, f = result.transform
        extent = (c, c + a * result.width, f + e * result.height, f)
        units = result.crs or "map units"
    ax.imshow(
        class_map_rgba(result.preview, len(classes)),
        extent=extent,
        interpolation="nearest",
        aspect="equal",
    )
    ax.set_xlabel(f"x ({units})" if units != "px" else "column (px)")
    ax.set_ylabel(f"y ({units})" if units != "px" else "row (px)")
    ax.ticklabel_format(useOffset=False, style="plain")
    valid = sum(result.class_pixels.values())
    total = valid + result.nodata_pixels
    handles = [
        Patch(color=color, label=f"{name}: {_share(result.class_pixels[name], valid)}")
        for name, color in zip(classes, class_colors(len(classes)), strict=True)
    ]
    if result.nodata_pixels:
        share = _share(result.nodata_pixels, total)
        handles.append(Patch(color=NODATA_COLOR, label=f"nodata: {share} of the scene"))
    ax.legend(
        handles=handles,
        title="share of valid pixels",
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        frameon=False,
    )
    scale = f", drawn 1:{result.preview_step}" if result.preview_step > 1 else ""
    ax.set_title(f"{result.width} x {result.height} px{scale}", fontsize="medium")
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    write_atomic(path, buffer.getvalue())


def _share(count: int, of: int) -> str:
    if not of:
        return "0%"
    share = 100.0 * count / of
    return f"{share:.1f}%" if share >= 0.1 or not count else "<0.1%"
