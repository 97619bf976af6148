"""Models. Each model that the maths can read exposes ``bilinear_form()`` (see ``bilinear.decompose``)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig


def weight_shapes(path: str | Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor shapes from a safetensors file's header, without reading the tensors; None when unreadable
    (``checkpoint.load_weights`` then gives the precise error)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception:  # noqa: BLE001 - any unreadable header is reported by load_weights
        return None


def check_shapes_before_building(run_dir: str | Path, model_cfg: DictConfig) -> None:
    """Compare the shapes a config would build (on the meta device: no memory) with the weights file's.

    A crafted config.yaml with a huge width would otherwise ask for its allocation before any shape is
    compared; this makes it a one-line error first.
    """
    from bilinear import checkpoint
    from bilinear.errors import CheckpointError
    from bilinear.models.registry import build_model, check_allocation

    path = Path(run_dir) / checkpoint.WEIGHTS
    shapes = weight_shapes(path) if path.is_file() else None
    if shapes is None:
        return
    meta = build_model(model_cfg, device="meta")
    check_allocation(meta, path.stat().st_size, str(path))
    for name, tensor in meta.state_dict().items():
        if name in shapes and tuple(tensor.shape) != shapes[name]:
            raise CheckpointError(f"{path}: weights do not match the config: {name} has shape {shapes[name]}, "
                                  f"the config builds {tuple(tensor.shape)}")


def load_run_model(run_dir: str | Path, run_cfg: DictConfig, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The finished model of a run directory, built from its config and loaded from its safetensors, in eval mode.

    The model comes from the allow-list of ``bilinear.models.registry``, never from ``instantiate``: the
    run directory may come from someone else. A config that cannot build its model, or weights that do
    not fit it, is a one-line error.
    """
    from bilinear import checkpoint
    from bilinear.errors import CheckpointError, ConfigError
    from bilinear.models.registry import build_model

    if "model" not in run_cfg:
        raise CheckpointError(f"{Path(run_dir) / checkpoint.CONFIG}: no 'model' section")
    try:
        check_shapes_before_building(run_dir, run_cfg.model)
        model = build_model(run_cfg.model)
    except ConfigError as e:
        raise CheckpointError(f"{run_dir}: its config.yaml cannot build a model ({str(e).removeprefix('config: ')})") from None
    checkpoint.load_weights(Path(run_dir) / checkpoint.WEIGHTS, model)
    return model.to(device).eval()
