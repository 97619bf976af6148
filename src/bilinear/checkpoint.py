"""The run directory: the contract between training and analysis (DESIGN.md "Data flow").

    <run>/config.yaml        resolved config
    <run>/model.safetensors  weights (never pickle: a downloaded run must not be able to run code)
    <run>/metrics.json       final metrics; ``"complete": true`` once training finished
    <run>/history.csv        one row per evaluation
    <run>/train_state.pt     optimizer + step for resume (tensors and plain containers only)
    <run>/analysis/          what ``python -m analyze`` writes

Every write goes to a temporary file in the same directory and is renamed into place, so an interrupted
run never leaves a half-written file under a final name.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
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

CONFIG, WEIGHTS, METRICS, HISTORY, TRAIN_STATE = "config.yaml", "model.safetensors", "metrics.json", "history.csv", "train_state.pt"


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
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in blocks (weights, token caches)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | Path) -> Any:
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e.__class__.__name__})") from None


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
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


def save_train_state(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


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
    try:
        cfg = OmegaConf.load(run_dir / CONFIG)
    except Exception as e:  # noqa: BLE001 - yaml errors come in many types
        raise CheckpointError(f"{run_dir / CONFIG}: unreadable config ({e.__class__.__name__})") from None
    if not isinstance(cfg, DictConfig) or "task" not in cfg:
        raise CheckpointError(f"{run_dir / CONFIG}: not a training config (no 'task' section)")
    return cfg


def load_weights(path: str | Path, model: nn.Module, keep: Collection[str] = ()) -> None:
    """Load safetensors weights into ``model``; refuse corrupt files and any mismatch with the config.

    ``keep``: state-dict names the model keeps its own values for, whether or not the file has them. E15's
    ``train.init_from`` uses it for the swish gates' beta buffers: a SwiGLU run does not store them, and the
    fine-tune's starting beta is its own config's ``model.beta``. Every other name must match exactly.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: no {path.name}; training did not finish")
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
    """True when training finished and wrote its final metrics (reproduce skips such runs)."""
    run_dir = Path(run_dir)
    if not (run_dir / WEIGHTS).is_file() or not (run_dir / METRICS).is_file():
        return False
    try:
        return bool(json.loads((run_dir / METRICS).read_text()).get("complete"))
    except (OSError, json.JSONDecodeError):
        return False
