"""CIFAR-10 readers on fixture files the tests write: the binary format and the HF hub's parquet schema."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from bilinear.dataio import cifar
from bilinear.dataio.images import load_image_dataset
from bilinear.errors import DataError
from conftest import run_cli


def fixture_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 3, 32, 32) uint8, labels (n,)): class c is a bright square whose colour and place depend on c."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = (rng.random((n, 3, 32, 32)) * 50).astype(np.uint8)
    for i, c in enumerate(labels):
        r, col = 2 + 3 * (c % 5) * 2 // 2, 4 + (c // 5) * 14
        images[i, c % 3, r : r + 8, col : col + 10] = 250
    return images, labels


def write_binary(folder: Path, n_per_batch: int = 40, n_test: int = 30) -> dict:
    """The official layout: <folder>/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin, records = label + 3072 bytes."""
    d = folder / "cifar-10-batches-bin"
    d.mkdir(parents=True, exist_ok=True)
    written = {}
    for k, name in enumerate([*cifar.TRAIN_FILES, *cifar.TEST_FILES]):
        x, y = fixture_arrays(n_test if name == "test_batch.bin" else n_per_batch, k)
        records = np.concatenate([y.astype(np.uint8)[:, None], x.reshape(len(x), -1)], axis=1)
        (d / name).write_bytes(records.tobytes())
        written[name] = (x, y)
    (d / "batches.meta.txt").write_text("\n".join(cifar.CLASSES) + "\n")
    return written


def png_bytes(img_chw: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img_chw.transpose(1, 2, 0)).save(buf, format="PNG")
    return buf.getvalue()


def write_parquet(folder: Path, n_train: int = 24, n_test: int = 12) -> dict:
    """The hub's files: plain_text/{train,test}-00000-of-00001.parquet with img {bytes, path} and label."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = folder / "plain_text"
    d.mkdir(parents=True, exist_ok=True)
    written = {}
    img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for split, n, seed in (("train", n_train, 10), ("test", n_test, 11)):
        x, y = fixture_arrays(n, seed)
        table = pa.table({"img": pa.array([{"bytes": png_bytes(im), "path": None} for im in x], type=img_type),
                          "label": pa.array(y, type=pa.int64())})
        pq.write_table(table, d / f"{split}-00000-of-00001.parquet")
        written[split] = (x, y)
    return written


def test_binary_format_roundtrip(tmp_path):
    written = write_binary(tmp_path / "cifar10")
    data = load_image_dataset("cifar10", tmp_path, verify=False)
    assert data.image_shape == (3, 32, 32) and data.classes[0] == "airplane" and data.name == "cifar10"
    x1, y1 = written["data_batch_1.bin"]
    assert data.train_x.shape == (5 * 40, 3072) and data.test_x.shape == (30, 3072)
    # channel-major flattening (R plane, G plane, B plane), scaled to [0, 1]
    assert np.allclose(data.train_x[:40].numpy(), x1.reshape(40, -1) / 255.0)
    assert (data.train_y[:40].numpy() == y1).all()
    assert (data.test_y.numpy() == written["test_batch.bin"][1]).all()


def test_binary_format_checks(tmp_path):
    write_binary(tmp_path / "cifar10")
    with pytest.raises(DataError, match="expected 50000"):
        load_image_dataset("cifar10", tmp_path, verify=True)
    bad = tmp_path / "cifar10/cifar-10-batches-bin/data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(DataError, match="data_batch_3.bin.*records"):
        load_image_dataset("cifar10", tmp_path, verify=False)


def test_hub_parquet_schema(tmp_path):
    written = write_parquet(tmp_path / "cifar10")
    data = load_image_dataset("cifar10", tmp_path, verify=False)
    x, y = written["train"]
    assert np.allclose(data.train_x.numpy(), x.reshape(len(x), -1) / 255.0)  # PNG is lossless
    assert (data.test_y.numpy() == written["test"][1]).all()


def test_hub_dataset_objects(tmp_path):
    """The online path converts ``datasets`` splits; here they come from the same parquet files, offline."""
    import datasets

    written = write_parquet(tmp_path / "cifar10")
    files = {s: str(tmp_path / f"cifar10/plain_text/{s}-00000-of-00001.parquet") for s in ("train", "test")}
    splits = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf"))
    splits = splits.cast_column("img", datasets.Image())
    data = cifar.image_data_from_hub(splits["train"], splits["test"], verify=False)
    assert np.allclose(data.test_x.numpy(), written["test"][0].reshape(12, -1) / 255.0)


def test_missing_offline_says_how_to_get_it_and_ignores_pickles(tmp_path):
    py = tmp_path / "cifar10/cifar-10-batches-py"
    py.mkdir(parents=True)
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (py / name).write_bytes(b"not read")  # the python (pickle) format is never opened
    with pytest.raises(DataError, match="cifar-10-binary.tar.gz"):
        load_image_dataset("cifar10", tmp_path, verify=True)


def test_train_and_analyse_on_fixture_binary(tmp_path):
    write_binary(tmp_path / "data/cifar10", n_per_batch=60, n_test=40)
    run = tmp_path / "run"
    run_cli("train", "task=cifar10", "scale=tiny", f"data_root={tmp_path / 'data'}", f"hydra.run.dir={run}", "train.progress=false")
    assert json.loads((run / "metrics.json").read_text())["complete"]
    run_cli("analyze", f"ckpt={run}", "analyses=[eigenvectors]")
    assert (run / "analysis/eigenvectors/top_eigenvectors.png").is_file()  # drawn as RGB images
