"""POST/GET/DELETE /v1/datasets through the real app: the happy path and every hostile upload."""

from __future__ import annotations

import numpy as np
import pytest

from tests.service.conftest import assert_problem
from tests.tiles import (
    huge_tiff_header,
    random_tiles,
    symlink_entry,
    tile_bytes,
    truncated,
    vrt_text,
    write_dataset_zip,
    write_zip_bomb,
    zip_with,
)


def upload(client, zip_path, name="tiles"):
    with open(zip_path, "rb") as handle:
        return client.post(
            "/v1/datasets",
            files={"file": (zip_path.name, handle, "application/zip")},
            data={"name": name},
        )


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    return folder


def holds_nothing(folder):
    return not folder.exists() or not any(folder.iterdir())


def files_outside(root, data_dir):
    """Every path under `root` but outside `data_dir`, with its size and modification time."""
    return sorted(
        (str(p), p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if data_dir not in p.parents and p != data_dir
    )


def float_tiles_with_nan(count, seed):
    tiles = random_tiles(count, shape=(32, 32, 5), dtype="float32", seed=seed)
    for tile in tiles:
        tile[:3, :4, 1] = np.nan
    return tiles


def test_upload_reports_band_stats_equal_to_numpy_on_valid_pixels(client, inputs, data_dir):
    classes = {"field": float_tiles_with_nan(3, 1), "forest": float_tiles_with_nan(2, 2)}
    zip_path = write_dataset_zip(inputs / "five.zip", classes, top_folder="export")

    response = upload(client, zip_path, name="five-band")

    assert response.status_code == 201, response.text
    dataset = response.json()
    stacked = np.concatenate([np.stack(t) for t in classes.values()]).reshape(-1, 5)
    stacked = stacked.astype("float64")
    np.testing.assert_allclose(dataset["band_stats"]["mean"], np.nanmean(stacked, 0), rtol=1e-6)
    np.testing.assert_allclose(dataset["band_stats"]["std"], np.nanstd(stacked, 0), rtol=1e-6)
    assert dataset["name"] == "five-band" and dataset["status"] == "ready"
    assert dataset["num_tiles"] == 5 and dataset["num_bands"] == 5
    assert dataset["dtype"] == "float32" and dataset["tile_size"] == [32, 32]
    assert dataset["classes"] == ["field", "forest"]
    assert dataset["class_counts"] == {"field": 3, "forest": 2}
    assert (data_dir / "datasets" / dataset["id"] / "tiles.npy").is_file()
    assert client.get(f"/v1/datasets/{dataset['id']}").json() == dataset
    listed = client.get("/v1/datasets").json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == dataset["id"]


def test_upload_of_13_band_uint16_with_nodata_excludes_nodata(client, inputs):
    tiles = random_tiles(4, shape=(32, 32, 13), dtype="uint16", seed=3)
    for tile in tiles:
        tile[:5, :5, :] = 0
    zip_path = write_dataset_zip(inputs / "s2.zip", {"a": tiles[:2], "b": tiles[2:]}, nodata=0)

    dataset = upload(client, zip_path).json()

    pixels = np.stack(tiles).reshape(-1, 13).astype("float64")
    valid = np.where(pixels == 0, np.nan, pixels)
    np.testing.assert_allclose(dataset["band_stats"]["mean"], np.nanmean(valid, 0), rtol=1e-9)
    np.testing.assert_allclose(dataset["band_stats"]["std"], np.nanstd(valid, 0), rtol=1e-9)
    assert dataset["nodata"] == 0 and dataset["dtype"] == "uint16"


def test_delete_removes_the_record_and_its_files(client, inputs, data_dir):
    zip_path = write_dataset_zip(inputs / "d.zip", {"a": random_tiles(2), "b": random_tiles(2)})
    dataset_id = upload(client, zip_path).json()["id"]

    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 204

    assert not (data_dir / "datasets" / dataset_id).exists()
    assert_problem(client.get(f"/v1/datasets/{dataset_id}"), 404, dataset_id)


def test_a_dataset_a_queued_job_trains_on_is_not_deleted_under_it(client, inputs, data_dir):
    zip_path = write_dataset_zip(inputs / "d.zip", {"a": random_tiles(5), "b": random_tiles(5)})
    dataset_id = upload(client, zip_path).json()["id"]
    job = client.post("/v1/jobs", json={"dataset_id": dataset_id, "weights": "none"})
    assert job.status_code == 202, job.text
    job = job.json()

    response = client.delete(f"/v1/datasets/{dataset_id}")

    assert_problem(response, 409, "in use by 1 queued or running job(s)", job["id"], "/cancel")
    assert (data_dir / "datasets" / dataset_id / "tiles.npy").is_file()
    assert client.get(f"/v1/datasets/{dataset_id}").status_code == 200
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 204


def good(n=2, shape=(32, 32, 3), dtype="uint16", seed=0):
    return [tile_bytes(a) for a in random_tiles(n, shape=shape, dtype=dtype, seed=seed)]


def entries(**classes):
    return {f"{c}/{i}.tif": data for c, tiles in classes.items() for i, data in enumerate(tiles)}


def hostile(kind: str, folder, secret):
    """The zip for one kind of bad upload, and what the answer must name."""
    a, b = good(seed=1), good(seed=2)
    base = entries(a=a, b=b)
    if kind == "not a zip":
        path = folder / "x.zip"
        path.write_bytes(b"this is not a zip at all")
        return path, "zip"
    if kind == "truncated zip":
        path = zip_with(folder / "t.zip", base)
        path.write_bytes(truncated(path.read_bytes(), 0.6))
        return path, "zip"
    if kind == "parent traversal":
        return zip_with(folder / "p.zip", {**base, "../x.tif": a[0]}), "../x.tif"
    if kind == "absolute path":
        return zip_with(folder / "abs.zip", {**base, "/etc/x.tif": a[0]}), "/etc/x.tif"
    if kind == "symlink":
        info, target = symlink_entry("a/link.tif", str(secret))
        return zip_with(folder / "s.zip", {**base, info: target}), "link"
    if kind == "zip bomb":
        return write_zip_bomb(folder / "bomb.zip", "a/bomb.tif", 64 * 2**20, base), "bomb.tif"
    if kind == "too many entries":
        many = {f"a/{i}.tif": a[0] for i in range(30)}
        return zip_with(folder / "many.zip", {**many, **entries(b=b)}), "entries"
    if kind == "text renamed tif":
        return zip_with(folder / "txt.zip", {**base, "a/notes.tif": b"hello, world\n"}), "notes.tif"
    if kind == "truncated tiff":
        return zip_with(folder / "tt.zip", {**base, "a/cut.tif": truncated(a[0], 0.5)}), "cut.tif"
    if kind == "vrt renamed tif":
        vrt = vrt_text(secret)
        return zip_with(folder / "vrt.zip", {**base, "a/vrt.tif": vrt}), "vrt.tif"
    if kind == "huge declared tiff":
        return zip_with(folder / "huge.zip", {**base, "a/huge.tif": huge_tiff_header()}), "huge.tif"
    if kind == "mixed band counts":
        odd = good(1, shape=(32, 32, 4))
        return zip_with(folder / "mb.zip", {**base, "b/odd.tif": odd[0]}), "band"
    if kind == "mixed dtypes":
        odd = good(1, dtype="float32")
        return zip_with(folder / "md.zip", {**base, "b/odd.tif": odd[0]}), "pixel types"
    if kind == "mixed sizes":
        odd = good(1, shape=(48, 32, 3))
        return zip_with(folder / "ms.zip", {**base, "b/odd.tif": odd[0]}), "size"
    if kind == "one class":
        return zip_with(folder / "one.zip", entries(a=a + b)), "class"
    if kind == "empty class folder":
        return zip_with(folder / "e.zip", {**base, "c/": b""}), "'c/' has no tiles"
    if kind == "tile outside class folders":
        return zip_with(folder / "o.zip", {**base, "loose.tif": a[0]}), "loose.tif"
    raise AssertionError(kind)


HOSTILE = [
    "not a zip", "truncated zip", "parent traversal", "absolute path", "symlink", "zip bomb",
    "too many entries", "text renamed tif", "truncated tiff", "vrt renamed tif",
    "huge declared tiff", "mixed band counts", "mixed dtypes", "mixed sizes", "one class",
    "empty class folder", "tile outside class folders",
]  # fmt: skip


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_upload_is_a_4xx_problem_and_harms_nothing(make_client, inputs, tmp_path, kind):
    client = make_client(max_zip_entries=20, max_entry_bytes=8 * 2**20)
    secret = tmp_path / "secret.tif"
    secret.write_bytes(good(1)[0])
    keep_zip = write_dataset_zip(inputs / "keep.zip", {"x": random_tiles(2), "y": random_tiles(2)})
    kept = upload(client, keep_zip).json()
    data_dir = client.app.state.settings.data_dir
    kept_files = sorted(p.name for p in (data_dir / "datasets" / kept["id"]).iterdir())
    zip_path, needle = hostile(kind, inputs, secret)
    outside_before = files_outside(tmp_path, data_dir)

    response = upload(client, zip_path)

    body = assert_problem(response, 422 if kind != "not a zip" else response.status_code, needle)
    assert 400 <= body["status"] < 500
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get(f"/v1/datasets/{kept['id']}").json() == kept
    assert client.get("/v1/datasets").json()["count"] == 1
    assert sorted(p.name for p in (data_dir / "datasets").iterdir()) == [kept["id"]]
    assert sorted(p.name for p in (data_dir / "datasets" / kept["id"]).iterdir()) == kept_files
    assert list((data_dir / "uploads").iterdir()) == []
    assert files_outside(tmp_path, data_dir) == outside_before


def test_upload_over_the_size_limit_is_413_and_leaves_nothing(make_client, inputs, data_dir):
    client = make_client(max_upload_bytes=50_000)
    tiles = random_tiles(6, shape=(64, 64, 4), seed=5)
    zip_path = write_dataset_zip(inputs / "big.zip", {"a": tiles[:3], "b": tiles[3:]})
    assert zip_path.stat().st_size > 50_000

    assert_problem(upload(client, zip_path), 413, "50000 byte limit", "ANYBAND_MAX_UPLOAD_BYTES")
    assert client.get("/healthz").status_code == 200
    assert holds_nothing(data_dir / "uploads") and holds_nothing(data_dir / "datasets")


def test_upload_without_a_file_names_the_field(client):
    response = client.post("/v1/datasets", data={"name": "x"}, files={"other": ("a", b"1")})
    body = assert_problem(response, 422, "'file'")
    assert body["errors"][0]["field"] == "file"


def test_upload_that_is_not_multipart_is_refused(client):
    response = client.post("/v1/datasets", json={"file": "x"})
    assert_problem(response, 415, "multipart/form-data")


@pytest.mark.skipif(
    not __import__("pathlib").Path("../shared/data/landsat8-cloud-chips").is_dir(),
    reason="shared Landsat data not present",
)
def test_real_landsat_cloud_chips_upload(client, inputs):
    import zipfile
    from pathlib import Path

    root = Path("../shared/data/landsat8-cloud-chips")
    zip_path = inputs / "clouds.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for class_name in ("clear", "cloudy"):
            for tif in sorted((root / class_name).glob("*.tif"))[:6]:
                archive.write(tif, f"38-cloud/{class_name}/{tif.name}")

    dataset = upload(client, zip_path, name="38-cloud").json()

    assert dataset["num_bands"] == 4 and dataset["dtype"] == "uint16"
    assert dataset["tile_size"] == [64, 64] and dataset["class_counts"] == {"clear": 6, "cloudy": 6}


def test_streamed_upload_without_content_length_is_cut_off_at_the_limit(make_client, data_dir):
    client = make_client(max_upload_bytes=100_000)
    boundary = "anybandboundary"

    def body():
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="big.zip"\r\nContent-Type: application/zip\r\n\r\n'
        ).encode()
        for _ in range(50):  # 50 x 10 kB: five times the limit, never announced up front
            yield bytes(10_000)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/v1/datasets",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )

    assert_problem(response, 413, "100000 byte limit")
    assert holds_nothing(data_dir / "uploads")
    assert client.get("/healthz").json()["status"] == "ok"
