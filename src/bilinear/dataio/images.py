"""MNIST and Fashion-MNIST as in-memory tensors: local IDX files (``make data``) or the HF hub.

Images are flattened to 784 values scaled to [0, 1] (divide by 255) with no mean/std normalisation,
so the bilinear interaction matrices read directly in pixel space.

Local files live in ``<root>/<name>/`` under their canonical names (gzipped or not). With
``verify=True`` every file is checked against the published dataset before use; the result is cached
in ``<root>/<name>/.verified.json`` keyed by each file's size, mtime and inode, so later loads only
re-hash files that changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torch import Tensor

from bilinear.dataio.idx import parse_idx, read_raw
from bilinear.errors import ConfigError, DataError

SIDE = 28  # both datasets are 28x28 grayscale
SPLIT_FILES = {  # (split, part) -> canonical file stem; ".gz" is optional on disk
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DatasetSpec:
    title: str
    hub_id: str
    classes: tuple[str, ...]
    n_train: int
    n_test: int
    # stem -> accepted checksums, "md5-gz:<hex>" (of the .gz file as published) or
    # "sha256-raw:<hex>" (of the decompressed bytes, which survives re-compression).
    checksums: dict[str, tuple[str, ...]]


SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        title="MNIST",
        hub_id="ylecun/mnist",
        classes=tuple(str(d) for d in range(10)),
        n_train=60000,
        n_test=10000,
        checksums={
            "train-images-idx3-ubyte": ("md5-gz:f68b3c2dcbeaaa9fbdd348bbdeb94873",
                                        "sha256-raw:ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
            "train-labels-idx1-ubyte": ("md5-gz:d53e105ee54ea40749a09fcbcd1e9432",
                                        "sha256-raw:65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
            "t10k-images-idx3-ubyte": ("md5-gz:9fb629c4189551a2d022fa330f9573f3",
                                       "sha256-raw:0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
            "t10k-labels-idx1-ubyte": ("md5-gz:ec29112dd5afa0611ce80d1b7f02629c",
                                       "sha256-raw:ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
        },
    ),
    "fmnist": DatasetSpec(
        title="Fashion-MNIST",
        hub_id="zalando-datasets/fashion_mnist",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        n_train=60000,
        n_test=10000,
        # Debian re-gzipped the files, so only the decompressed bytes are comparable; these equal
        # the upstream raw MD5s f4a8712d.., 9018921c.., 8181f547.., 15d48437...
        checksums={
            "train-images-idx3-ubyte": ("sha256-raw:c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",),
            "train-labels-idx1-ubyte": ("sha256-raw:bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",),
            "t10k-images-idx3-ubyte": ("sha256-raw:5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",),
            "t10k-labels-idx1-ubyte": ("sha256-raw:0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",),
        },
    ),
}
CACHE_NAME = ".verified.json"
# Image datasets that are not IDX files: name -> "module:function(root, verify) -> ImageData".
OTHER_LOADERS: dict[str, str] = {"cifar10": "bilinear.dataio.cifar:load_cifar10"}


@dataclass
class ImageData:
    """A whole image-classification dataset held as tensors.

    train_x: (N_train, C*H*W) float32 in [0, 1]; train_y: (N_train,) int64 class indices.
    test_x: (N_test, C*H*W) float32; test_y: (N_test,) int64.
    image_shape: (C, H, W), e.g. (1, 28, 28); classes: class names indexed by label; name: "mnist", ...
    """

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    image_shape: tuple[int, int, int]
    classes: list[str]
    name: str

    def to(self, device: torch.device | str) -> ImageData:
        """A new ImageData with the four tensors on ``device`` (shared, as Tensor.to does, if already there)."""
        return dataclasses.replace(self, train_x=self.train_x.to(device), train_y=self.train_y.to(device),
                                   test_x=self.test_x.to(device), test_y=self.test_y.to(device),
                                   classes=list(self.classes))


def get_spec(name: str) -> DatasetSpec:
    if name not in SPECS:
        raise ConfigError(f"config: unknown image dataset {name!r}; choose one of {sorted(SPECS)}")
    return SPECS[name]


def find_files(folder: Path) -> dict[str, Path | None]:
    """stem -> the file on disk (the .gz name preferred over the plain one), or None if absent."""
    found: dict[str, Path | None] = {}
    for stem in SPLIT_FILES.values():
        found[stem] = next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)
    return found


def load_image_dataset(name: str, root: str | os.PathLike, verify: bool = True) -> ImageData:
    """Load ``name`` ("mnist" or "fmnist") from ``<root>/<name>/``, or from the HF hub if absent.

    verify=True checks checksums against the published files and the full 60000/10000 sizes.
    verify=False (small fixtures) skips both but still checks 28x28 images, label range and that
    images and labels agree in count. Raises DataError on any defect, ConfigError on an unknown name.
    Datasets in other formats (``OTHER_LOADERS``, e.g. CIFAR-10) are handed to their own module.
    """
    if name in OTHER_LOADERS:
        import importlib

        module, fn = OTHER_LOADERS[name].split(":")
        return getattr(importlib.import_module(module), fn)(root, verify)
    spec = get_spec(name)
    folder = Path(root) / name
    files = find_files(folder)
    missing = [stem for stem, path in files.items() if path is None]
    if missing:
        return _load_from_hub(name, spec, folder, missing, verify)
    return _load_local(name, spec, files, verify)


def verify_image_files(name: str, root: str | os.PathLike) -> None:
    """Check that the four files of ``name`` exist, match their checksums and parse; DataError if not.

    Also refreshes the ``.verified.json`` cache, so the next load skips hashing.
    """
    spec = get_spec(name)
    files = find_files(Path(root) / name)
    missing = [stem for stem, path in files.items() if path is None]
    if missing:
        raise DataError(_missing_message(spec, Path(root) / name, missing) + "; run `make data`")
    _load_local(name, spec, files, verify=True)


def _missing_message(spec: DatasetSpec, folder: Path, missing: list[str]) -> str:
    if len(missing) == len(SPLIT_FILES):
        return f"{spec.title} not found under {folder}"
    return f"{spec.title} incomplete under {folder} (missing {', '.join(m + '.gz' for m in missing)})"


def _load_local(name: str, spec: DatasetSpec, files: dict[str, Path], verify: bool) -> ImageData:
    stats = {stem: _stat_key(path) for stem, path in files.items()}  # before reading: see verify_checksums
    raw = {stem: read_raw(path) for stem, path in files.items()}
    if verify or _is_full_size(spec, raw):
        # verify=false exists for small fixtures; files of the published size claim to be the published
        # data, so they are checked whatever the scale (a pixel-inverted MNIST once trained at scale=tiny)
        verify_checksums(spec, files, raw, stats)
    arrays = {key: parse_idx(raw.pop(stem), str(files[stem])) for key, stem in SPLIT_FILES.items()}
    sources = {key: str(files[stem]) for key, stem in SPLIT_FILES.items()}
    return _build(name, spec, arrays, sources, check_sizes=verify)


# --- checksums -------------------------------------------------------------------------------------


def _is_full_size(spec: DatasetSpec, raw: dict[str, bytes]) -> bool:
    """True when every file's IDX header (bytes 4..8: the item count) gives the published 60000/10000 sizes."""
    expected = {"train": spec.n_train, "test": spec.n_test}
    for (split, _), stem in SPLIT_FILES.items():
        data = raw.get(stem, b"")
        if len(data) < 8 or int.from_bytes(data[4:8], "big") != expected[split]:
            return False
    return True


def _checksum(kind: str, path: Path, raw: bytes) -> str:
    if kind == "md5-gz":
        return hashlib.md5(path.read_bytes()).hexdigest()
    return hashlib.sha256(raw).hexdigest()


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    # The inode catches a file replaced by one with the same size and a copied mtime (shutil.copy2).
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _read_cache(folder: Path) -> dict:
    try:
        cache = json.loads((folder / CACHE_NAME).read_text())
        return cache if isinstance(cache, dict) and isinstance(cache.get("files"), dict) else {"files": {}}
    except (OSError, ValueError):
        return {"files": {}}


def _write_cache(folder: Path, cache: dict) -> None:
    tmp = folder / f"{CACHE_NAME}.{os.getpid()}.tmp"
    try:  # write-then-rename so a concurrent reader never sees half a file
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        os.replace(tmp, folder / CACHE_NAME)
    except OSError:  # a read-only data dir only costs re-hashing next time
        tmp.unlink(missing_ok=True)


def verify_checksums(spec: DatasetSpec, files: dict[str, Path], raw: dict[str, bytes],
                     stats: dict[str, dict[str, int]]) -> None:
    """Compare each file with its published checksum (``raw``: decompressed bytes, already read).

    A file passes if any accepted checksum matches; a file whose (size, mtime, inode) was verified
    against the same checksums before is not hashed again. ``stats`` were taken before ``raw`` was
    read, so a file changed meanwhile is recorded under its old stat and re-hashed next time.
    """
    folder = next(iter(files.values())).parent
    cache = _read_cache(folder)
    changed = False
    for stem, path in files.items():
        accepted = spec.checksums[stem]
        key = stats[stem]
        hit = cache["files"].get(path.name)
        if isinstance(hit, dict) and hit.get("stat") == key and hit.get("checksum") in accepted:
            continue
        # md5-gz only makes sense for a .gz file; a plain file falls through to the raw hash.
        kinds = [c.split(":", 1) for c in accepted if path.suffix == ".gz" or not c.startswith("md5-gz:")]
        got = {kind: _checksum(kind, path, raw[stem]) for kind in {k for k, _ in kinds}}
        match = next((f"{kind}:{want}" for kind, want in kinds if got[kind] == want), None)
        if match is None:
            kind, want = kinds[0] if kinds else accepted[0].split(":", 1)
            what = "md5 of the .gz file" if kind == "md5-gz" else "sha256 of the decompressed bytes"
            raise DataError(f"{path}: checksum mismatch (expected {what} {want}, got {got.get(kind)}); "
                            "re-run `make data`")
        cache["files"][path.name] = {"stat": key, "checksum": match}
        changed = True
    if changed:
        _write_cache(folder, cache)


# --- arrays -> tensors -----------------------------------------------------------------------------


def _build(name: str, spec: DatasetSpec, arrays: dict[tuple[str, str], np.ndarray],
           sources: dict[tuple[str, str], str], check_sizes: bool) -> ImageData:
    """ImageData from uint8 arrays keyed (split, part): images (N, 28, 28), labels (N,)."""
    out: dict[str, Tensor] = {}
    for split, n_expected in (("train", spec.n_train), ("test", spec.n_test)):
        images, labels = arrays[(split, "images")], arrays[(split, "labels")]
        src_x, src_y = sources[(split, "images")], sources[(split, "labels")]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
            raise DataError(f"{src_x}: expected uint8 images of shape (N, {SIDE}, {SIDE}), "
                            f"got {images.dtype} {images.shape}")
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DataError(f"{src_y}: expected a 1-d array of integer labels, got {labels.dtype} {labels.shape}")
        if len(images) != len(labels):
            raise DataError(f"{src_x}: {len(images)} images but {src_y} has {len(labels)} labels")
        if check_sizes and len(images) != n_expected:
            raise DataError(f"{src_x}: {len(images)} images, expected {n_expected} for {spec.title} {split}; "
                            "re-run `make data`")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(spec.classes)):
            raise DataError(f"{src_y}: labels must lie in 0..{len(spec.classes) - 1}, "
                            f"found {labels.min()}..{labels.max()}")
        out[f"{split}_x"] = torch.from_numpy(images.reshape(len(images), -1)).float().div_(255.0)
        out[f"{split}_y"] = torch.from_numpy(labels.astype(np.int64))
    return ImageData(**out, image_shape=(1, SIDE, SIDE), classes=list(spec.classes), name=name)


# --- HF hub ----------------------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}


def _hub_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe, so a machine without internet fails at once instead of after datasets' retries."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy can't be probed this way; let datasets try
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)), timeout).close()
        return True
    except (OSError, TypeError):
        return False


def _load_from_hub(name: str, spec: DatasetSpec, folder: Path, missing: list[str], verify: bool) -> ImageData:
    where = _missing_message(spec, folder, missing)
    if _hub_offline() or not _hub_reachable():
        raise DataError(f"{where}; run `make data` (or go online so it can be fetched from the HF hub)")
    import datasets  # slow to import; only this path needs it

    try:
        splits = datasets.load_dataset(spec.hub_id)
    except Exception as e:  # noqa: BLE001 - network, auth and format errors all mean "not available"
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise DataError(f"{where} and fetching {spec.hub_id} from the HF hub failed "
                        f"({type(e).__name__}: {first_line}); run `make data`") from None
    return image_data_from_hub_rows(name, splits["train"], splits["test"], verify=verify)


def _hub_arrays(ds, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) int64) from a Dataset with columns image (PIL) and label."""
    import datasets

    if "image" not in ds.column_names or "label" not in ds.column_names:
        raise DataError(f"{source}: expected columns 'image' and 'label', got {ds.column_names}")
    # Decoding to mode "L" makes every image a 2-d uint8 array whatever it was stored as.
    ds = ds.cast_column("image", datasets.Image(mode="L")).with_format("numpy")
    if len(ds) == 0:
        return np.zeros((0, SIDE, SIDE), np.uint8), np.zeros((0,), np.int64)
    cols = ds[:]
    images = np.asarray(cols["image"])
    if images.dtype == object:  # images of different sizes come back as a ragged object array
        raise DataError(f"{source}: images differ in size; expected all {SIDE}x{SIDE}")
    return images, np.asarray(cols["label"])


def image_data_from_hub_rows(name: str, train, test, *, verify: bool = True) -> ImageData:
    """ImageData from two ``datasets.Dataset`` splits with columns ``image`` (PIL) and ``label`` (int).

    verify=True also requires the canonical 60000/10000 sizes (checksums don't apply to hub rows).
    """
    spec = get_spec(name)
    arrays, sources = {}, {}
    for split, ds in (("train", train), ("test", test)):
        source = f"{spec.hub_id}[{split}]"
        arrays[(split, "images")], arrays[(split, "labels")] = _hub_arrays(ds, source)
        sources[(split, "images")] = sources[(split, "labels")] = source
    return _build(name, spec, arrays, sources, check_sizes=verify)
