"""Models. Each model that the maths can read exposes ``bilinear_form()`` (see ``bilinear.decompose``)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig


def load_run_model(run_dir: str | Path, run_cfg: DictConfig, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The finished model of a run directory, built from its config and loaded from its safetensors, in eval mode.

    A config that cannot build its model, or weights that do not fit it, is a CheckpointError (one line).
    """
    from hydra.utils import instantiate

    from bilinear import checkpoint
    from bilinear.errors import CheckpointError

    try:
        model = instantiate(run_cfg.model)
    except Exception as e:  # noqa: BLE001 - a config that cannot build its model is a bad checkpoint
        raise CheckpointError(f"{run_dir}: config cannot build its model ({e.__class__.__name__}: {e})") from None
    checkpoint.load_weights(Path(run_dir) / checkpoint.WEIGHTS, model)
    return model.to(device).eval()
