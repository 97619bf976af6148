"""Input perturbations applied to each training batch (PAPER.md "Input noise"; E7 adds more).

Every perturbation is random per sample, drawn for the whole batch at once on the batch's device, from
the step's generator (so runs are reproducible and resumable).
"""

from __future__ import annotations

from typing import Callable

import torch
from omegaconf import DictConfig
from torch import Tensor

from bilinear.errors import ConfigError

Perturbation = Callable[[Tensor, torch.Generator], Tensor]


def gaussian_noise(std: float) -> Perturbation:
    """Dense Gaussian noise with an ABSOLUTE per-pixel std on [0, 1] pixels, no clipping (Table 1)."""

    def apply(x: Tensor, gen: torch.Generator) -> Tensor:
        return x + std * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)

    return apply


def build_perturbations(tcfg: DictConfig, image_shape: tuple[int, ...]) -> list[Perturbation]:
    """The list of perturbations a training config asks for, applied in order."""
    if tcfg.noise_std < 0:
        raise ConfigError(f"config: train.noise_std must be >= 0, got {tcfg.noise_std}")
    perturbations: list[Perturbation] = []
    if tcfg.noise_std > 0:
        perturbations.append(gaussian_noise(tcfg.noise_std))
    return perturbations
