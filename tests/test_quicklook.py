"""The scene quicklook: a colour per class, nodata apart, the picture itself."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anyband.quicklook import (
    NODATA_COLOR,
    _extent_and_axes,
    _share,
    class_colors,
    class_map_rgba,
    plot_class_map,
)
from anyband.scenes import SceneResult


@pytest.mark.parametrize("classes", [1, 2, 10, 11, 20, 21, 40])
def test_every_class_gets_its_own_colour(classes):
    colors = class_colors(classes)

    assert colors.shape == (classes, 3)
    assert len({tuple(np.round(c, 4)) for c in colors}) == classes
    assert not any(np.allclose(c, NODATA_COLOR[:3]) for c in colors)


def test_class_indices_map_to_their_colour_and_nodata_to_grey():
    preview = np.array([[0, 1], [-1, 2]], dtype=np.int16)

    rgba = class_map_rgba(preview, 3)

    colors = class_colors(3)
    np.testing.assert_allclose(rgba[0, 0, :3], colors[0])
    np.testing.assert_allclose(rgba[0, 1, :3], colors[1])
    np.testing.assert_allclose(rgba[1, 1, :3], colors[2])
    np.testing.assert_allclose(rgba[1, 0], NODATA_COLOR)


def scene_result(preview, classes, transform=None, crs=None) -> SceneResult:
    counts = {name: int(np.count_nonzero(preview == k)) for k, name in enumerate(classes)}
    return SceneResult(
        width=preview.shape[1],
        height=preview.shape[0],
        windows=1,
        classes=list(classes),
        stride=(32, 32),
        seconds=0.1,
        crs=crs,
        transform=transform,
        class_pixels=counts,
        nodata_pixels=int(np.count_nonzero(preview == -1)),
        preview=preview,
    )


def colour_pixels(png, color) -> int:
    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int(
        np.count_nonzero(np.all(np.abs(image - np.round(np.asarray(color)[:3] * 255)) <= 1, -1))
    )


@pytest.mark.parametrize(
    ("transform", "crs"), [(None, None), ((10.0, 0.0, 5e5, 0.0, -10.0, 5e6), "EPSG:32633")]
)
def test_the_picture_shows_each_class_in_its_colour_in_proportion(tmp_path, transform, crs):
    # Three quarters water, one quarter forest, a nodata strip; no cropland at all.
    preview = np.full((200, 400), 2, dtype=np.int16)
    preview[:, 300:] = 1
    preview[:10] = -1
    result = scene_result(preview, ["cropland", "forest", "water"], transform, crs)
    (tmp_path / "out").mkdir()
    png = tmp_path / "out" / "preview.png"

    plot_class_map(result, png, title="scene.tif: classes by model m")

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    colors = class_colors(3)
    water, forest = colour_pixels(png, colors[2]), colour_pixels(png, colors[1])
    assert forest > 1000 and 2.5 < water / forest < 3.5  # the map, drawn in proportion
    assert colour_pixels(png, colors[0]) < 400  # cropland: its legend patch only
    assert colour_pixels(png, NODATA_COLOR) > 100
    assert list(png.parent.iterdir()) == [png]  # written whole, nothing left beside it


def test_a_result_without_a_preview_is_refused(tmp_path):
    result = SceneResult(1, 1, 1, ["a"], (1, 1), 0.0)

    with pytest.raises(ValueError, match="holds no preview"):
        plot_class_map(result, tmp_path / "p.png", title="t")


@pytest.mark.parametrize(
    ("transform", "crs", "labels", "where"),
    [
        (
            (30.0, 0.0, 5e5, 0.0, -30.0, 4.5e6),
            "EPSG:32618",
            ("easting (metre)", "northing (metre)"),
            ", EPSG:32618",
        ),
        (
            (0.001, 0.0, -70.5, 0.0, -0.001, -8.0),
            "EPSG:4326",
            ("longitude (°)", "latitude (°)"),
            ", EPSG:4326",
        ),
        ((30.0, 0.0, 5e5, 0.0, -30.0, 4.5e6), None, ("x (map units)", "y (map units)"), ""),
        (
            (30.0, 5.0, 5e5, 5.0, -30.0, 4.5e6),
            "EPSG:32618",
            ("column (px)", "row (px)"),
            "",
        ),  # rotated
        (None, None, ("column (px)", "row (px)"), ""),
    ],
)
def test_a_map_is_drawn_in_its_own_coordinates_with_their_units(transform, crs, labels, where):
    result = scene_result(np.zeros((100, 200), np.int16), ["a"], transform, crs)

    extent, got_labels, got_where = _extent_and_axes(result)

    assert (got_labels, got_where) == (labels, where)
    if labels[0] == "column (px)":
        assert extent == (0, 200, 100, 0)  # row 0 at the top
    else:
        a, _, c, _, e, f = transform
        assert extent == (c, c + 200 * a, f + 100 * e, f)  # left, right, bottom, top


def test_shares_of_a_scene_with_no_valid_pixel_are_not_applicable():
    assert _share(0, 0) == "n/a"
    assert (_share(1, 3), _share(1, 10_000), _share(0, 10)) == ("33.3%", "<0.1%", "0.0%")
