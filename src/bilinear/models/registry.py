"""The suite's model classes, built from plain typed values: never ``hydra.utils.instantiate``.

A run directory is data a user may have been given. Hydra's ``instantiate`` would call any importable
callable its config names, nested anywhere (a ``_target_`` inside ``model.hidden_noise`` ran a shell command
through ``numpy.load(allow_pickle=True)``). So every model, whether composed from the command line or read
from a run's config.yaml, an SAE's LM, ``train.init_from`` or an imported checkpoint, is built here:

- ``model._target_`` must name one of ``MODEL_CLASSES``;
- every other key must be a parameter of that class's ``__init__``;
- every value must be a plain scalar of the parameter's annotated type (no mappings, so no nested targets);
- sizes must be positive integers.

Breaking any rule is a ``ConfigError`` (one line), raised before a single tensor is allocated.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from bilinear.errors import ConfigError, UserError
from bilinear.models.image import ImageClassifier
from bilinear.models.sae import TopKSAE
from bilinear.models.toy import BilinearToy
from bilinear.models.transformer import Transformer

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "bilinear.models.image.ImageClassifier": ImageClassifier,
    "bilinear.models.toy.BilinearToy": BilinearToy,
    "bilinear.models.transformer.Transformer": Transformer,
    "bilinear.models.sae.TopKSAE": TopKSAE,
}
# Widths, depths and counts: a zero-width model trains "fine" and means nothing, so each must be >= 1.
POSITIVE_INTS = {"d_input", "d_hidden", "n_classes", "n_layers", "d_output", "vocab_size", "n_ctx", "d_model",
                 "n_layer", "n_head", "expansion", "k", "n_latents"}
# Probabilities and magnitudes that must lie in a range.
RANGES = {"dropout": (0.0, 1.0), "hidden_noise": (0.0, float("inf")), "beta": (0.0, float("inf")),
          "rope_base": (1e-12, float("inf")), "norm_eps": (0.0, 1.0)}


def _allowed_types(annotation: Any) -> tuple[type, ...]:
    """Plain types an annotation admits: ``int | None`` -> (int, NoneType)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for a in typing.get_args(annotation) for t in _allowed_types(a))
    if annotation is None or annotation is type(None):
        return (type(None),)
    return (annotation,)


def _type_ok(value: Any, allowed: tuple[type, ...]) -> bool:
    for t in allowed:
        if t is bool and isinstance(value, bool):
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if t in (str, type(None)) and isinstance(value, t):
            return True
    return False


def model_kwargs(model_cfg: DictConfig | Mapping[str, Any]) -> tuple[type[nn.Module], dict[str, Any]]:
    """Check a ``model`` config section against the allow-list; return the class and its keyword arguments."""
    if isinstance(model_cfg, DictConfig):
        try:
            spec = OmegaConf.to_container(model_cfg, resolve=True)
        except Exception as e:  # noqa: BLE001 - omegaconf raises several interpolation errors
            raise ConfigError(f"config: model section does not resolve ({e.__class__.__name__})") from None
    else:
        spec = dict(model_cfg)
    if not isinstance(spec, dict):
        raise ConfigError(f"config: model must be a mapping, got {spec!r}")
    target = spec.pop("_target_", None)
    cls = MODEL_CLASSES.get(target) if isinstance(target, str) else None
    if cls is None:
        raise ConfigError(f"config: model._target_ {target!r} is not one of the suite's models "
                          f"({', '.join(sorted(MODEL_CLASSES))})")
    params = inspect.signature(cls.__init__).parameters
    hints = typing.get_type_hints(cls.__init__)  # our own source's annotations, resolved from their strings
    kwargs: dict[str, Any] = {}
    for key, value in spec.items():
        if key not in params or key == "self":
            raise ConfigError(f"config: model.{key} is not a parameter of {target}")
        allowed = _allowed_types(hints.get(key, type(params[key].default)))
        if not _type_ok(value, allowed):
            names = " or ".join(sorted({"null" if t is type(None) else t.__name__ for t in allowed}))
            raise ConfigError(f"config: model.{key} must be {names}, got {value!r} ({type(value).__name__})")
        if isinstance(value, float) and value != value:
            raise ConfigError(f"config: model.{key} is NaN")
        if key in POSITIVE_INTS and value is not None and value < 1:
            raise ConfigError(f"config: model.{key} must be >= 1, got {value}")
        if key in RANGES and value is not None:
            lo, hi = RANGES[key]
            if not lo <= value <= hi:
                raise ConfigError(f"config: model.{key} must lie in [{lo}, {hi}], got {value}")
        kwargs[key] = value
    return cls, kwargs


def build_model(model_cfg: DictConfig | Mapping[str, Any], device: torch.device | str | None = None) -> nn.Module:
    """The model a ``model`` config section describes (see the module docstring for the rules).

    ``device="meta"`` builds it without allocating storage, to compare shapes before loading anything.
    """
    cls, kwargs = model_kwargs(model_cfg)
    try:
        if device is None:
            return cls(**kwargs)
        with torch.device(device):
            return cls(**kwargs)
    except UserError:
        raise
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"config: the model section cannot build {cls.__name__} ({e.__class__.__name__}: "
                          f"{str(e).splitlines()[0][:120]})") from None


def planned_bytes(model: nn.Module) -> int:
    """Bytes a model's parameters and buffers (persistent or not) take once built; works on a meta model."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def check_allocation(model_meta: nn.Module, stored_bytes: int, where: str) -> None:
    """Refuse a config that would allocate far more than its weights hold (a crafted width or context).

    The only legitimate excess is derived state such as rotary tables (n_ctx x head_dim / 2 per table),
    small beside the weights; 4x plus 64 MiB leaves room for that and catches a 1 KB file asking for GBs.
    """
    need = planned_bytes(model_meta)
    if need > 4 * stored_bytes + (64 << 20):
        raise ConfigError(f"{where}: the config asks for {need / 2**30:.2f} GiB of weights and tables, but the weights "
                          f"file holds {stored_bytes / 2**30:.3f} GiB; refusing to allocate (a crafted or mismatched config)")
