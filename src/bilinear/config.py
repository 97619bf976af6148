"""Checks on a composed Hydra config, and the small helpers the two commands share.

Hydra already rejects unknown keys (the configs are in struct mode). What it cannot see is a value of
the wrong type, because yaml gives no schema: ``train.epochs=abc`` composes fine. We compare every
leaf against the same config composed from the yaml alone (same group choices, no value overrides),
so the yaml stays the single source of the types and defaults.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue

from bilinear.errors import ConfigError, UserError


def _leaf_type_ok(expected: Any, got: Any) -> bool:
    if expected is None or got is None:
        return True  # null in yaml means "any value"; null given means "use the default behaviour"
    if isinstance(expected, bool):
        return isinstance(got, bool)
    if isinstance(expected, int):
        return isinstance(got, int) and not isinstance(got, bool)
    if isinstance(expected, float):
        return isinstance(got, (int, float)) and not isinstance(got, bool)
    if isinstance(expected, str):
        return isinstance(got, str)
    return True


INF = float("inf")
# What yaml cannot say: the type of a ``null`` default, and the range of a value. Keys absent from a config
# (another task's) are skipped. (types, low, high); bounds are inclusive, None means unbounded.
SCHEMA: dict[str, tuple[tuple[type, ...], float | None, float | None]] = {
    "seed": ((int,), 0, None),
    "train.lr": ((float,), 0, None),                   # AdamW rejects lr < 0 with a traceback (0 freezes: a test uses it)
    "train.weight_decay": ((float,), 0, None),
    "train.grad_clip": ((float,), 0, None),            # null or 0 = off
    "train.epochs": ((int,), 1, None),
    "train.steps": ((int,), 1, None),
    "train.tokens": ((int,), 1, None),
    "train.batch_size": ((int,), 1, None),
    "train.warmup_steps": ((int,), 0, None),
    "train.noise_std": ((float,), 0, None),
    "train.eval_every": ((int,), 1, None),
    "train.eval_every_epochs": ((int,), 1, None),
    "train.eval_every_steps": ((int,), 1, None),
    "train.checkpoint_every": ((int,), 0, None),
    "train.stop_after_steps": ((int,), 1, None),
    "train.time_budget_s": ((float,), 1e-9, None),
    "train.init_from": ((str,), None, None),
    "train.augment.rotation": ((float,), 0, 180),
    "train.augment.translation": ((float,), 0, None),
    "train.augment.blur": ((float,), 0, None),
    "train.augment.salt_pepper": ((float,), 0, 1),
    "train.augment.perlin": ((float,), 0, None),
    "train.augment.perlin_cells": ((int,), 1, None),
    "data.limit_train": ((int,), 1, None),
    "data.limit_test": ((int,), 1, None),
    "data.max_tokens": ((int,), 1, None),
    "data.max_docs": ((int,), 1, None),
    "data.tokenizer": ((str,), None, None),
    "data.vocab_size": ((int,), 2, None),
    "data.buffer_tokens": ((int,), 1, None),
    "data.lm_batch": ((int,), 1, None),
    "model.gate": ((str,), None, None),
    "model.d_model": ((int,), 1, None),
    "model.d_hidden": ((int,), 1, None),
    "model.dropout": ((float,), 0, 1),
    "model.hidden_noise": ((float,), 0, None),
    "sae.layer": ((int,), 0, None),
    "lm": ((str,), None, None),
    "exactness_tol": ((float,), 0, None),
    "class_id": ((int,), 0, None),
}


def _get(cfg: Any, path: str) -> tuple[bool, Any]:
    node = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def check_schema(cfg: dict) -> None:
    """Raise ConfigError at the first value of ``SCHEMA`` with the wrong type or out of its range."""
    for path, (types, lo, hi) in SCHEMA.items():
        present, value = _get(cfg, path)
        if not present or value is None:
            continue
        if not any(_leaf_type_ok(t(), value) for t in types):
            raise ConfigError(f"config: {path} must be {' or '.join(t.__name__ for t in types)} or null, got {value!r}")
        if isinstance(value, float) and value != value:
            raise ConfigError(f"config: {path} is NaN")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f">= {lo}" if hi is None else (f"<= {hi}" if lo is None else f"in [{lo}, {hi}]")
            raise ConfigError(f"config: {path} must be {bounds}, got {value!r}")


def check_types(cfg: Any, reference: Any, path: str = "") -> None:
    """Raise ConfigError at the first leaf of ``cfg`` whose type differs from the yaml's default."""
    if isinstance(reference, (DictConfig, dict)):
        if not isinstance(cfg, (DictConfig, dict)):
            raise ConfigError(f"config: {path} must be a mapping, got {cfg!r}")
        for key in reference:
            if key in cfg:
                check_types(cfg[key], reference[key], f"{path}.{key}" if path else str(key))
        return
    if isinstance(reference, (ListConfig, list)):
        if cfg is not None and not isinstance(cfg, (ListConfig, list)):
            raise ConfigError(f"config: {path} must be a list, got {cfg!r}")
        return
    if not _leaf_type_ok(reference, cfg):
        raise ConfigError(f"config: {path} must be {type(reference).__name__}, got {cfg!r} ({type(cfg).__name__})")


def check_against_yaml(cfg: DictConfig, config_name: str) -> None:
    """Compose ``config_name`` with only the group choices of this run and type-check ``cfg`` against it."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    groups = set(hc.runtime.choices)
    choices = [o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") in groups]
    reference = compose(config_name=config_name, overrides=choices)
    values = OmegaConf.to_container(cfg, resolve=True)
    check_types(values, _container(reference))
    check_schema(values)


def _container(cfg: DictConfig) -> Any:
    """Resolved plain container; unresolvable interpolations (hydra-only resolvers such as ${now:}, which do
    not resolve outside a run) stay strings, which the type check treats as strings."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - omegaconf raises several interpolation errors
        return OmegaConf.to_container(cfg, resolve=False)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA where available, else CPU; an explicit device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config: device must be auto, cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config: device=cuda but no CUDA device is available")
    return device


# Errors of the disk, not of the code: a full disk, a read-only or foreign folder.
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR}


def run_command(fn: Callable[[], Any], write_hint: str = "") -> Any:
    """Run a command body; a UserError becomes one line on stderr and exit status 2, with no traceback.

    So does an OSError of the disk (full, read-only, not ours): it names the path, and ``write_hint`` says
    which option writes elsewhere. Atomic writes mean the earlier files are intact.
    """
    try:
        return fn()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (ConfigAttributeError, ConfigKeyError, MissingMandatoryValue) as e:
        # Our own configs are composed and type-checked against the yaml, so a key missing at run time comes
        # from a config.yaml read off disk: a hand-made or truncated run directory.
        print(f"error: config: {getattr(e, 'full_key', None) or e} is missing from a run's config.yaml "
              "(a hand-made or incomplete run directory?)", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - only disk errors are handled; the rest re-raise with their traceback
        code = _disk_errno(e)
        if code not in WRITE_ERRNOS:
            raise
        where = f"cannot write {e.filename}" if isinstance(e, OSError) and e.filename else "a write failed"
        hint = f"; {write_hint}" if write_hint else ""
        print(f"error: {where}: {os.strerror(code)}{hint}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def _disk_errno(e: BaseException) -> int | None:
    """The errno of an OSError, or the ``(os error N)`` that Rust-backed libraries (safetensors, tokenizers)
    put in the message of their own exception types."""
    if isinstance(e, OSError):
        return e.errno
    m = re.search(r"\(os error (\d+)\)", str(e))
    return int(m.group(1)) if m else None


def project_root() -> Path:
    """The checkout (two levels above this file, since the package lives in src/bilinear)."""
    return Path(__file__).resolve().parents[2]
