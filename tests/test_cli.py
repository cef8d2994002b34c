"""The `anyband` command, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from anyband.cli import main


@pytest.mark.slow
def test_build_then_inspect_through_the_installed_command(tmp_path):
    out = tmp_path / "six.keras"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    build = [sys.executable, "-m", "anyband.cli", "build", "--bands", "6", "--classes", "10"]
    build += ["--strategy", "rgb", "--rgb-bands", "3", "2", "1", "--weights", "none"]
    subprocess.run([*build, "--out", str(out)], check=True, env=env, capture_output=True)

    shown = subprocess.run(
        [sys.executable, "-m", "anyband.cli", "inspect", str(out)],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )

    described = json.loads(shown.stdout)
    assert described["bands"] == 6 and described["classes"] == 10
    assert described["strategy"] == "rgb" and described["per_band"] is False
    assert described["conv1_kernel_shape"] == [7, 7, 6, 64]


def test_build_with_imagenet_and_band_stats(imagenet_weights, tmp_path, capsys):
    out = tmp_path / "pb.keras"
    code = main(
        [
            *("build", "--bands", "2", "--classes", "3", "--strategy", "per_band"),
            *("--band-mean", "10", "20", "--band-std", "2", "4", "--out", str(out)),
        ]
    )
    assert code == 0
    assert main(["inspect", str(out)]) == 0
    described = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert described["per_band"] is True
    assert described["conv1_kernel_shape"] == [7, 7, 1, 64]
    assert described["band_mean"] == pytest.approx([10, 20])


def test_bad_arguments_exit_2_with_the_reason(tmp_path, capsys):
    code = main(
        [
            *("build", "--bands", "0", "--classes", "3", "--weights", "none"),
            *("--out", str(tmp_path / "x.keras")),
        ]
    )
    assert code == 2
    assert "bands must be an integer >= 1. Received: bands=0" in capsys.readouterr().err


def test_missing_imagenet_weights_exit_2_and_name_the_file(tmp_path, capsys):
    code = main(["build", "--bands", "4", "--classes", "2", "--out", str(tmp_path / "m.keras")])
    assert code == 2
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in capsys.readouterr().err
