"""CIFAR-10 as in-memory tensors: the binary distribution parsed with numpy, local hub parquet, or the HF hub.

Images are 3x32x32, flattened channel-major (R plane, G plane, B plane: 3072 values) and scaled to [0, 1]
like the other image datasets (the reproduction study of PAPER.md used [-1, 1]; we keep one convention).

Sources, in order:
  1. ``<root>/cifar10/cifar-10-batches-bin/`` (or the same files directly in ``<root>/cifar10/``): the
     official binary version, ``data_batch_{1..5}.bin`` and ``test_batch.bin``; each record is one label
     byte followed by 3072 pixel bytes.
  2. ``<root>/cifar10/plain_text/{train,test}-*.parquet``: the HF hub's files (``uoft-cs/cifar10``),
     columns ``img`` (struct of PNG ``bytes`` and ``path``) and ``label``.
  3. The HF hub when online.
The python-format batches (``cifar-10-batches-py``) are never read: they are pickles, and unpickling a
downloaded file can run arbitrary code.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch

from bilinear.dataio.images import ImageData, _hub_offline, _hub_reachable
from bilinear.errors import DataError

NAME = "cifar10"
HUB_ID = "uoft-cs/cifar10"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SHAPE = (3, 32, 32)
RECORD = 1 + 3 * 32 * 32
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
N_TRAIN, N_TEST = 50000, 10000
HOW_TO_GET = (
    "download https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz (162 MB, md5 c32a1d4ab5d03f1284b67883e8d87530) "
    "and run `tar xzf cifar-10-binary.tar.gz -C data/cifar10` (giving data/cifar10/cifar-10-batches-bin/), "
    "or put the HF hub's uoft-cs/cifar10 parquet files under data/cifar10/plain_text/, or run online so "
    "the HF hub is used; the python-format batches are not read (unpickling can run code)"
)


def read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One ``*.bin`` file -> (images (N, 3072) uint8, labels (N,) int64). DataError on a malformed file."""
    try:
        blob = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if blob.size == 0 or blob.size % RECORD:
        raise DataError(f"{path}: {blob.size} bytes is not a whole number of {RECORD}-byte CIFAR-10 records")
    records = blob.reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(CLASSES):
        raise DataError(f"{path}: label {labels.max()} out of range 0..9 (is this the CIFAR-100 file?)")
    return np.ascontiguousarray(records[:, 1:]), labels


def _binary_folder(folder: Path) -> Path | None:
    for cand in (folder / "cifar-10-batches-bin", folder):
        if all((cand / f).is_file() for f in TRAIN_FILES + TEST_FILES):
            return cand
    return None


def _parquet_files(folder: Path) -> dict[str, list[Path]] | None:
    files = {split: sorted((folder / "plain_text").glob(f"{split}-*.parquet")) for split in ("train", "test")}
    return files if all(files.values()) else None


def decode_png_column(images: list, source: str) -> np.ndarray:
    """Hub ``img`` cells (dicts with PNG ``bytes``, or PIL images) -> (N, 3072) uint8, channel-major."""
    from PIL import Image

    out = np.empty((len(images), 3 * 32 * 32), np.uint8)
    for i, cell in enumerate(images):
        img = cell if isinstance(cell, Image.Image) else Image.open(io.BytesIO(cell["bytes"]))
        arr = np.asarray(img.convert("RGB"))
        if arr.shape != (32, 32, 3):
            raise DataError(f"{source}: image {i} has shape {arr.shape}, expected 32x32 RGB")
        out[i] = arr.transpose(2, 0, 1).reshape(-1)
    return out


def read_parquet(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Hub-schema parquet files (columns ``img``, ``label``) -> (images (N, 3072) uint8, labels (N,))."""
    import pyarrow.parquet as pq

    xs, ys = [], []
    for p in paths:
        try:
            table = pq.read_table(p)
        except Exception as e:  # noqa: BLE001 - any parse error means a bad file
            raise DataError(f"{p}: not a readable parquet file ({type(e).__name__}: {e})") from None
        if not {"img", "label"} <= set(table.column_names):
            raise DataError(f"{p}: expected columns 'img' and 'label' (the uoft-cs/cifar10 schema), got {table.column_names}")
        xs.append(decode_png_column(table.column("img").to_pylist(), str(p)))
        ys.append(np.asarray(table.column("label").to_pylist(), dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def from_arrays(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], source: str,
                verify: bool) -> ImageData:
    """ImageData from (images (N, 3072) uint8, labels (N,)) per split; verify=True requires 50000/10000."""
    out = {}
    for split, (x, y), n in (("train", train, N_TRAIN), ("test", test, N_TEST)):
        if len(x) != len(y):
            raise DataError(f"{source}: {split} has {len(x)} images but {len(y)} labels")
        if verify and len(x) != n:
            raise DataError(f"{source}: {split} has {len(x)} images, expected {n}; {HOW_TO_GET}")
        if len(y) and (y.min() < 0 or y.max() >= len(CLASSES)):
            raise DataError(f"{source}: {split} labels must lie in 0..9, found {y.min()}..{y.max()}")
        out[f"{split}_x"] = torch.from_numpy(x.reshape(len(x), -1)).float().div_(255.0)
        out[f"{split}_y"] = torch.from_numpy(y.astype(np.int64))
    return ImageData(**out, image_shape=SHAPE, classes=list(CLASSES), name=NAME)


def image_data_from_hub(train, test, verify: bool = True) -> ImageData:
    """ImageData from two ``datasets.Dataset`` splits in the hub schema (``img`` PIL/dict, ``label``)."""
    arrays = []
    for split, ds in (("train", train), ("test", test)):
        if "img" not in ds.column_names or "label" not in ds.column_names:
            raise DataError(f"{HUB_ID}[{split}]: expected columns 'img' and 'label', got {ds.column_names}")
        arrays.append((decode_png_column(list(ds["img"]), f"{HUB_ID}[{split}]"), np.asarray(ds["label"], np.int64)))
    return from_arrays(arrays[0], arrays[1], HUB_ID, verify)


def load_cifar10(root: str | os.PathLike, verify: bool = True) -> ImageData:
    """CIFAR-10 from ``<root>/cifar10/`` (binary, then parquet), else the HF hub; DataError says how to get it.

    verify=True checks the canonical 50000/10000 sizes (the binary files have no published per-file hashes).
    """
    folder = Path(root) / NAME
    binary = _binary_folder(folder)
    if binary is not None:
        train = [read_binary_batch(binary / f) for f in TRAIN_FILES]
        test = read_binary_batch(binary / TEST_FILES[0])
        return from_arrays((np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])), test,
                           str(binary), verify)
    parquet = _parquet_files(folder)
    if parquet is not None:
        return from_arrays(read_parquet(parquet["train"]), read_parquet(parquet["test"]), str(folder / "plain_text"), verify)
    where = f"CIFAR-10 not found under {folder}"
    if _hub_offline() or not _hub_reachable():
        raise DataError(f"{where}; {HOW_TO_GET}")
    import datasets

    try:
        splits = datasets.load_dataset(HUB_ID)
    except Exception as e:  # noqa: BLE001 - network, auth and format errors all mean "not available"
        first = (str(e).strip().splitlines() or [""])[0]
        raise DataError(f"{where} and fetching {HUB_ID} failed ({type(e).__name__}: {first}); {HOW_TO_GET}") from None
    return image_data_from_hub(splits["train"], splits["test"], verify)
