"""The conv1 math, checked against rules written out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from anyband import adapt_conv1_kernel, per_band_kernel


@pytest.fixture
def bgr_kernel():
    return np.random.default_rng(0).normal(size=(7, 7, 3, 64)).astype("float32")


def rgb_of(bgr_kernel):
    return bgr_kernel[:, :, [2, 1, 0], :]


@pytest.mark.parametrize("bands", range(1, 17))
def test_repeat_matches_timm_rule_for_any_band_count(bgr_kernel, bands):
    rgb = rgb_of(bgr_kernel)
    if bands == 1:
        expected = rgb[:, :, 0:1] + rgb[:, :, 1:2] + rgb[:, :, 2:3]
    else:
        expected = np.stack([rgb[:, :, c % 3] * 3 / bands for c in range(bands)], axis=2)

    adapted = adapt_conv1_kernel(bgr_kernel, bands, "repeat")

    assert adapted.shape == (7, 7, bands, 64)
    np.testing.assert_allclose(adapted, expected, rtol=1e-6)


@pytest.mark.parametrize("bands", range(1, 17))
def test_mean_is_rgb_mean_times_three_over_n(bgr_kernel, bands):
    rgb = rgb_of(bgr_kernel)
    mean = (rgb[:, :, 0] + rgb[:, :, 1] + rgb[:, :, 2]) / 3
    expected = np.stack([mean * 3 / bands] * bands, axis=2)

    np.testing.assert_allclose(adapt_conv1_kernel(bgr_kernel, bands, "mean"), expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("strategy", "bands"), [("mean", 2), ("mean", 5), ("mean", 13), ("repeat", 6)]
)
def test_flat_image_gets_the_pretrained_conv1_response(bgr_kernel, strategy, bands):
    """A flat image gives conv1 the same response at any band count: what the 3/N scale is for
    (for `repeat` exactly when N is a multiple of 3)."""
    reference = rgb_of(bgr_kernel).sum(axis=(0, 1, 2))
    adapted = adapt_conv1_kernel(bgr_kernel, bands, strategy)
    np.testing.assert_allclose(adapted.sum(axis=(0, 1, 2)), reference, rtol=1e-4, atol=1e-4)


def test_rgb_places_red_green_blue_and_zeros_elsewhere(bgr_kernel):
    adapted = adapt_conv1_kernel(bgr_kernel, 6, "rgb", rgb_bands=(3, 2, 1))

    np.testing.assert_array_equal(adapted[:, :, 2], bgr_kernel[:, :, 2])  # red from BGR slot 2
    np.testing.assert_array_equal(adapted[:, :, 1], bgr_kernel[:, :, 1])  # green
    np.testing.assert_array_equal(adapted[:, :, 0], bgr_kernel[:, :, 0])  # blue
    assert not adapted[:, :, 3:].any()


def test_channel_order_rgb_takes_source_channels_as_given(bgr_kernel):
    as_rgb = adapt_conv1_kernel(bgr_kernel, 4, "rgb", rgb_bands=(1, 2, 3), channel_order="rgb")
    np.testing.assert_array_equal(as_rgb[:, :, :3], bgr_kernel)


def test_rgb_other_bands_use_the_named_initializer(bgr_kernel):
    adapted = adapt_conv1_kernel(
        bgr_kernel, 5, "rgb", rgb_bands=(1, 2, 3), initializer="he_normal", seed=1
    )
    assert adapted[:, :, 3:].std() > 0.01
    np.testing.assert_array_equal(adapted[:, :, 0], bgr_kernel[:, :, 2])


def test_random_glorot_uniform_is_seeded_and_has_glorot_variance(bgr_kernel):
    first = adapt_conv1_kernel(bgr_kernel, 13, "random", seed=42)
    again = adapt_conv1_kernel(bgr_kernel, 13, "random", seed=42)
    other = adapt_conv1_kernel(bgr_kernel, 13, "random", seed=43)

    fan_in, fan_out = 7 * 7 * 13, 7 * 7 * 64
    limit = np.sqrt(6 / (fan_in + fan_out))
    assert first.shape == (7, 7, 13, 64)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.abs(first).max() <= limit
    assert first.var() == pytest.approx(2 / (fan_in + fan_out), rel=0.03)


def test_random_uses_the_named_initializer(bgr_kernel):
    he = adapt_conv1_kernel(bgr_kernel, 6, "random", initializer="he_normal", seed=0)
    zeros = adapt_conv1_kernel(bgr_kernel, 6, "random", initializer="zeros")

    assert he.var() == pytest.approx(2 / (7 * 7 * 6), rel=0.05)
    assert not zeros.any()


def test_per_band_kernel_is_the_rgb_sum(bgr_kernel):
    expected = bgr_kernel.sum(axis=2, keepdims=True)
    np.testing.assert_allclose(per_band_kernel(bgr_kernel), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        adapt_conv1_kernel(bgr_kernel, 9, "per_band"), expected, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bands": 0, "strategy": "repeat"}, "bands must be an integer >= 1. Received: bands=0"),
        ({"bands": -3, "strategy": "mean"}, "Received: bands=-3"),
        ({"bands": 2.5, "strategy": "mean"}, "Received: bands=2.5"),
        ({"bands": True, "strategy": "mean"}, "Received: bands=True"),
        ({"bands": 4, "strategy": "copy"}, "strategy must be one of random, repeat, mean"),
        ({"bands": 6, "strategy": "rgb", "rgb_bands": (0, 1, 2)}, "within 1..6"),
        ({"bands": 6, "strategy": "rgb", "rgb_bands": (5, 6, 7)}, "rgb_bands=(5, 6, 7)"),
        ({"bands": 6, "strategy": "rgb", "rgb_bands": (4, 4, 2)}, "3 distinct positions"),
        ({"bands": 6, "strategy": "rgb", "rgb_bands": (1, 2)}, "rgb_bands=(1, 2)"),
        ({"bands": 2, "strategy": "rgb"}, "needs at least 3 bands"),
        ({"bands": 4, "strategy": "random", "initializer": "glorot_uniformm"}, "glorot_uniformm"),
        ({"bands": 4, "strategy": "repeat", "channel_order": "rbg"}, "channel_order"),
    ],
)
def test_bad_arguments_say_what_was_received_and_expected(bgr_kernel, kwargs, message):
    with pytest.raises(ValueError, match=None) as error:
        adapt_conv1_kernel(bgr_kernel, **kwargs)
    assert message in str(error.value)


def test_source_kernel_must_have_three_channels():
    with pytest.raises(
        ValueError, match=r"shape \(kh, kw, 3, filters\). Received: shape=\(7, 7, 4, 64\)"
    ):
        adapt_conv1_kernel(np.zeros((7, 7, 4, 64)), 5, "repeat")
