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
    # As in a model folder of the service, where the card names the classes.
    (tmp_path / "card.json").write_text(json.dumps({"classes": ["crop", "forest", "water"]}))
    assert main(["inspect", str(out)]) == 0
    described = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert described["class_names"] == ["crop", "forest", "water"]
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


@pytest.fixture(scope="module")
def plain_keras_model(tmp_path_factory):
    import keras

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(
        inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inputs))
    )
    path = tmp_path_factory.mktemp("plain") / "plain.keras"
    model.save(path)
    return path


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda path, plain: path.write_bytes(b"PK\x03\x04" + b"\0" * 50), "is not a .keras model"),
        (lambda path, plain: path.write_bytes(plain.read_bytes()[:3000]), "is not a .keras model"),
        (lambda path, plain: _zip_without_config(path), "is not a readable .keras model"),
        (lambda path, plain: path.write_bytes(plain.read_bytes()), "not one anyband built"),
    ],
    ids=["not-a-zip", "truncated", "zip-without-config", "plain-keras-model"],
)
def test_inspect_of_a_file_that_is_not_an_anyband_model_exits_2_saying_what_it_is(
    tmp_path, capsys, plain_keras_model, make, needle
):
    path = tmp_path / "model.keras"
    make(path, plain_keras_model)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(path) in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def _zip_without_config(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", "{}")


def test_help_and_import_anyband_do_not_load_tensorflow():
    code = (
        "import sys, anyband, anyband.cli\n"
        "try:\n    anyband.cli.main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
        "assert 'build_classifier' in dir(anyband)\n"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "address to listen on" in shown.stdout and "ANYBAND_API_KEYS" in shown.stdout
