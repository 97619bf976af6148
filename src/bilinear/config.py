"""Checks on a composed Hydra config, and the small helpers the two commands share.

Hydra already rejects unknown keys (the configs are in struct mode). What it cannot see is a value of
the wrong type, because yaml gives no schema: ``train.epochs=abc`` composes fine. We compare every
leaf against the same config composed from the yaml alone (same group choices, no value overrides),
so the yaml stays the single source of the types and defaults.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

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
    check_types(OmegaConf.to_container(cfg, resolve=True), _container(reference))


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


def run_command(fn: Callable[[], Any]) -> Any:
    """Run a command body; a UserError becomes one line on stderr and exit status 2, with no traceback."""
    try:
        return fn()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def project_root() -> Path:
    """The checkout (two levels above this file, since the package lives in src/bilinear)."""
    return Path(__file__).resolve().parents[2]
