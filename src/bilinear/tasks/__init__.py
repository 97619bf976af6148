"""Tasks: what a training run learns. A task bundles data + model + objective (DESIGN.md "Data flow").

``cfg.task._target_`` names the task class, one of ``TASK_CLASSES`` (an allow-list, like the models':
nothing imports whatever a config names); it is built as ``Task(cfg, device)``. The training loop
(``bilinear.training.fit``) and the analyses (``bilinear.analyses``) only use the protocol below.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from bilinear.errors import ConfigError


class Task(Protocol):
    model: nn.Module
    steps_per_epoch: int  # what one "epoch" means for progress and seconds_per_epoch
    total_steps: int
    eval_every_steps: int

    def train_batch(self, step: int, generator: torch.Generator) -> Any:
        """The batch for this optimizer step; deterministic in (seed, step) so resume is exact."""

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss to minimise and per-batch statistics for the progress bar and history."""

    def after_step(self, step: int) -> None:
        """Hook after each optimizer step (e.g. annealing a gate); most tasks do nothing."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out metrics, called every ``eval_every_steps`` steps."""

    def final_metrics(self, model: nn.Module) -> dict[str, Any]:
        """Metrics saved in metrics.json at the end of training."""

    def save_artifacts(self, run_dir) -> None:
        """Anything besides the weights that analysis needs (a tokenizer, ...)."""


TASK_CLASSES = {
    "bilinear.tasks.image.ImageTask": ("bilinear.tasks.image", "ImageTask"),
    "bilinear.tasks.casper.CasperTask": ("bilinear.tasks.casper", "CasperTask"),
    "bilinear.tasks.gates.GatesTask": ("bilinear.tasks.gates", "GatesTask"),
    "bilinear.tasks.lm.LMTask": ("bilinear.tasks.lm", "LMTask"),
    "bilinear.tasks.sae.SAETask": ("bilinear.tasks.sae", "SAETask"),
}


def build_task(cfg: DictConfig, device: torch.device) -> Task:
    import importlib

    target = cfg.task.get("_target_")
    if target not in TASK_CLASSES:
        raise ConfigError(f"config: task._target_ {target!r} is not one of the suite's tasks ({', '.join(TASK_CLASSES)})")
    module, name = TASK_CLASSES[target]  # imported lazily: the LM tasks pull in tokenizers and datasets
    return getattr(importlib.import_module(module), name)(cfg, device)
