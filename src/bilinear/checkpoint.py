"""The run directory: the contract between training and analysis (DESIGN.md "Data flow").

    <run>/config.yaml        resolved config
    <run>/model.safetensors  weights (never pickle: a downloaded run must not be able to run code)
    <run>/metrics.json       final metrics; ``"complete": true`` once training finished
    <run>/history.csv        one row per evaluation
    <run>/manifest.json      sha256 of every file training wrote, the step, the code version (``bilinear.rundir``)
    <run>/checkpoints/       step-named weights + train state of an unfinished run (``bilinear.rundir``)
    <run>/analysis/          what ``python -m analyze`` writes

Every write goes to a temporary file in the same directory, is fsynced, and is renamed into place (then the
folder is fsynced), so an interrupted run never leaves a half-written file under a final name and a rename
that returned survives a power cut.

Loading verifies: when a ``manifest.json`` sits beside the files, ``load_config`` checks every file it lists
and ``load_weights`` the weights it reads, so a changed or corrupted byte is a one-line error naming the
file. Runs written before manifests existed load as before, with a note that they are unverified.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Collection, Iterator

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from bilinear.errors import CheckpointError

log = logging.getLogger(__name__)  # the "unverified run" note: console (and train.log under `python -m train`)

CONFIG, WEIGHTS, METRICS, HISTORY, MANIFEST = "config.yaml", "model.safetensors", "metrics.json", "history.csv", "manifest.json"
# Runs written before manifests kept their resume state here (and history rows in history.json); such a run
# still resumes, unverified (bilinear.training), and its first new checkpoint removes them.
TRAIN_STATE, LEGACY_HISTORY = "train_state.pt", "history.json"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600 whatever the umask; a run on a shared disk must be readable as any other file
        os.chmod(tmp, 0o666 & ~_UMASK)
        _fsync_file(tmp)  # the bytes reach the disk before the name does: a crash never shows a torn file
        os.replace(tmp, path)
        fsync_dir(path.parent)  # the rename itself reaches the disk
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Make a folder's entries (renames, new and removed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and platforms) refuse fsync on a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide, so reading it later would race threads


@contextmanager
def locked(path: str | Path, what: str = "this file") -> Iterator[None]:
    """Hold an exclusive advisory lock on ``<path>.lock`` for the block (read-modify-write of merged files).

    Blocks until the lock is free: merged files are short writes, so waiting is right (unlike a run
    folder's one-writer lock, where a second writer must be refused at once).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes) -> str:
    """Write ``data`` atomically; return its sha256 (the writer knows the hash without reading the file back)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    _remember_hash(Path(path), digest)
    return digest


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json_text(obj))


def json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n"


# sha256 by (path, inode, size, mtime): a process that verifies a run's manifest and then loads its weights
# (or hashes them for an SAE's lm.json) reads the file once. An atomic rewrite changes the inode, so a
# replaced file is hashed again.
_HASHES: dict[tuple, str] = {}


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


def _remember_hash(path: Path, digest: str) -> None:
    try:
        _HASHES[_stat_key(path)] = digest
    except OSError:
        pass


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in blocks (weights, token caches); cached while the file is unchanged."""
    path = Path(path)
    key = _stat_key(path)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


# --- the manifest (written by bilinear.rundir, verified by every loader) ----------------------------------


def read_manifest(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's manifest.json, or None for a run written before manifests existed."""
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return None
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{path}: not a run manifest (no 'files' table)")
    return manifest


def verify_files(run_dir: str | Path, names: Collection[str] | None = None,
                 manifest: dict[str, Any] | None = None) -> bool:
    """Check files of ``run_dir`` against the sha256 its manifest recorded; all listed files when ``names`` is None.

    Returns False (and logs a warning once) for a run without a manifest: it still loads, unverified.
    A named file the manifest does not list, a listed file that is missing, or a hash that differs is a
    CheckpointError naming the file.
    """
    run_dir = Path(run_dir)
    manifest = manifest if manifest is not None else read_manifest(run_dir)
    if manifest is None:
        _note_unverified(run_dir)
        return False
    files = manifest["files"]
    for name in (files if names is None else names):
        path = run_dir / name
        if name not in files:
            raise CheckpointError(f"{path}: not recorded in {run_dir / MANIFEST} (the run did not commit it; an "
                                  f"unfinished run continues with train.resume=true)")
        if not path.is_file():
            raise CheckpointError(f"{path}: missing, but {MANIFEST} records it")
        got = file_sha256(path)
        if got != files[name]:
            raise CheckpointError(f"{path}: sha256 {got[:12]}... differs from {files[name][:12]}... recorded in "
                                  f"{MANIFEST}; the file changed or was corrupted after training wrote it")
    return True


_NOTED: set[str] = set()


def _note_unverified(run_dir: Path) -> None:
    """Say once per run and process that a run has no manifest: written before manifests, or by hand."""
    key = str(run_dir.resolve())
    if key not in _NOTED:
        _NOTED.add(key)
        log.warning(f"{run_dir} has no {MANIFEST} (written before manifests existed); its files are unverified")


def verification(run_dir: str | Path) -> str:
    """``"verified"`` (manifest present and every file matches; raises otherwise) or ``"unverified"`` (no manifest),
    for an analysis to record beside its results."""
    return "verified" if verify_files(run_dir) else "unverified"


def read_json(path: str | Path) -> Any:
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e.__class__.__name__})") from None


def write_csv(path: str | Path, rows: list[dict[str, Any]], fields: list[str] | None = None) -> None:
    """``fields`` fixes the column order; by default, the keys in order of first appearance."""
    fields = fields or list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def read_history(run_dir: str | Path) -> list[dict[str, float]]:
    """history.csv of a run as rows of floats (empty cells dropped); [] when the run has none."""
    path = Path(run_dir) / HISTORY
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def save_config(run_dir: str | Path, cfg: DictConfig) -> None:
    write_text(Path(run_dir) / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))


def save_weights(path: str | Path, model: nn.Module) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def load_train_state(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read it is a corrupt checkpoint to the user
        raise CheckpointError(f"{path}: corrupt training state ({e.__class__.__name__})") from None


def load_config(run_dir: str | Path) -> DictConfig:
    """The run's resolved config, with clear errors when the directory is not a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"{run_dir}: no such run directory")
    if not run_dir.is_dir() or not (run_dir / CONFIG).is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no {CONFIG})")
    verify_files(run_dir)  # every file the run wrote, so analyze and resume see a changed byte at once
    try:
        cfg = OmegaConf.load(run_dir / CONFIG)
    except Exception as e:  # noqa: BLE001 - yaml errors come in many types
        raise CheckpointError(f"{run_dir / CONFIG}: unreadable config ({e.__class__.__name__})") from None
    if not isinstance(cfg, DictConfig) or "task" not in cfg:
        raise CheckpointError(f"{run_dir / CONFIG}: not a training config (no 'task' section)")
    return cfg


def load_weights(path: str | Path, model: nn.Module, keep: Collection[str] = (), verify: bool = True) -> None:
    """Load safetensors weights into ``model``; refuse corrupt files and any mismatch with the config.

    ``keep``: state-dict names the model keeps its own values for, whether or not the file has them. E15's
    ``train.init_from`` uses it for the swish gates' beta buffers: a SwiGLU run does not store them, and the
    fine-tune's starting beta is its own config's ``model.beta``. Every other name must match exactly.

    When a manifest.json sits beside the file, the file's sha256 must be the one it records: every loader
    (analyze, saes=, lm=, train.init_from) passes here, so none can read a changed or half-copied run.
    ``verify=False`` only for the weights of a pre-manifest checkpoint being resumed (nothing recorded them).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: no {path.name}; training did not finish")
    if verify and ((path.parent / MANIFEST).exists() or (path.parent / CONFIG).exists()):  # a run: verify or note
        verify_files(path.parent, [path.name])
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors file ({str(e).splitlines()[0][:80]})") from None
    expected = model.state_dict()
    # kept names: the model's value replaces the file's (or fills its absence); one the model lacks is dropped
    state.update({k: expected[k] for k in keep if k in expected})
    for k in set(keep) - set(expected):
        state.pop(k, None)
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path}: weights do not match the config (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: weights do not match the config: {name} has shape {tuple(tensor.shape)}, "
                f"the config builds {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state)


def is_complete(run_dir: str | Path) -> bool:
    """True when training finished and committed its final files (reproduce skips such runs).

    The manifest's rename is the commit: final metrics.json is written just before it, so a crash between
    the two leaves metrics saying complete under a manifest that still points at the last checkpoint. Such
    a run is unfinished (``train.resume=true`` completes it). A run without a manifest (written before
    manifests) is complete when its metrics say so, as before.
    """
    run_dir = Path(run_dir)
    if not (run_dir / WEIGHTS).is_file() or not (run_dir / METRICS).is_file():
        return False
    try:
        if not json.loads((run_dir / METRICS).read_text()).get("complete"):
            return False
        manifest = run_dir / MANIFEST
        return not manifest.exists() or bool(json.loads(manifest.read_text()).get("complete"))
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
