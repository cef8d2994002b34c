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
from matplotlib.ticker import MaxNLocator
from rasterio.crs import CRS
from rasterio.errors import CRSError

from anyband.artifacts import write_atomic

if TYPE_CHECKING:
    from anyband.scenes import SceneResult

NODATA_COLOR = (0.85, 0.85, 0.85, 1.0)
# Qualitative palettes without their greys, which would read as nodata.
_TAB10 = [c for i, c in enumerate(matplotlib.colormaps["tab10"].colors) if i != 7]
_TAB20 = [c for i, c in enumerate(matplotlib.colormaps["tab20"].colors) if i not in (14, 15)]


def class_colors(classes: int) -> np.ndarray:
    """(classes, 3) RGB in [0, 1]: matplotlib's qualitative tab10 (9 colours without its grey)
    or tab20 (18) while they have enough, else evenly spaced along turbo."""
    if classes < 1:
        raise ValueError(f"classes must be at least 1. Received: classes={classes}")
    for palette in (_TAB10, _TAB20):
        if classes <= len(palette):
            return np.asarray(palette[:classes], dtype=float)
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
    # The map's own size in inches (7 on its longer side), then room for labels and legend.
    aspect = result.height / result.width
    map_w, map_h = (7.0, max(7.0 * aspect, 0.8)) if aspect <= 1 else (max(7.0 / aspect, 0.8), 7.0)
    figure = Figure(figsize=(map_w + 4.0, map_h + 1.8), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    extent, (x_label, y_label), where = _extent_and_axes(result)
    ax.imshow(
        class_map_rgba(result.preview, len(classes)),
        extent=extent,
        interpolation="nearest",
        aspect="equal",
    )
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.ticklabel_format(useOffset=False, style="plain")
    # About one tick label per 1.4 in across (they are long: 7-digit northings) and per in down.
    ax.xaxis.set_major_locator(MaxNLocator(nbins=max(1, min(5, int(map_w / 1.4)))))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=max(1, min(7, int(map_h)))))
    ax.tick_params(axis="x", labelrotation=30)
    valid = sum(result.class_pixels.values())
    handles = [
        Patch(color=color, label=f"{name}: {_share(result.class_pixels[name], valid)}")
        for name, color in zip(classes, class_colors(len(classes)), strict=True)
    ]
    if result.nodata_pixels:
        share = _share(result.nodata_pixels, valid + result.nodata_pixels)
        handles.append(Patch(color=NODATA_COLOR, label=f"nodata: {share} of the scene"))
    figure.legend(
        handles=handles,
        title="share of valid pixels",
        loc="outside right upper",
        frameon=False,
    )
    drawn = f", every {result.preview_step} px drawn" if result.preview_step > 1 else ""
    ax.set_title(f"{title}\n{result.width} x {result.height} px{where}{drawn}", fontsize="medium")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", pad_inches=0.15)
    write_atomic(path, buffer.getvalue())


def _extent_and_axes(result: SceneResult):
    """imshow's extent, the axis labels, and the CRS for the title: map coordinates for a
    north-up georeferenced scene, pixel columns and rows otherwise."""
    pixels = (0, result.width, result.height, 0), ("column (px)", "row (px)"), ""
    transform = result.transform
    if transform is None or transform[1] or transform[3]:  # none, or rotated
        return pixels
    a, _, c, _, e, f = transform
    extent = (c, c + a * result.width, f + e * result.height, f)
    try:
        crs = CRS.from_user_input(result.crs) if result.crs else None
    except CRSError:
        crs = None
    if crs is None:
        return extent, ("x (map units)", "y (map units)"), ""
    if crs.is_geographic:
        labels = ("longitude (°)", "latitude (°)")
    else:
        units = crs.linear_units if crs.linear_units not in ("", "unknown") else "map units"
        labels = (f"easting ({units})", f"northing ({units})")
    return extent, labels, f", {crs.to_string()}"


def _share(count: int, of: int) -> str:
    if not of:
        return "n/a"
    share = 100.0 * count / of
    return f"{share:.1f}%" if share >= 0.1 or not count else "<0.1%"
