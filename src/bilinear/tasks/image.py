"""Image classification (PAPER.md §2): MNIST, Fashion-MNIST and friends, held in memory as tensors.

Batches are slices of one on-device tensor through a per-epoch permutation; no per-item Dataset
(DESIGN.md principle 7: this is what makes an epoch ~2.5x faster than a DataLoader loop).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from bilinear.augment import build_perturbations
from bilinear.errors import ConfigError
from bilinear.dataio.images import ImageData, load_image_dataset
from bilinear.models.registry import build_model


def load_data(cfg: DictConfig, device: torch.device) -> ImageData:
    """The dataset named by ``cfg.data``, subset by ``limit_train``/``limit_test``, on ``device``."""
    data = load_image_dataset(cfg.data.name, cfg.data.root, verify=cfg.data.verify)
    if cfg.data.limit_train:
        data.train_x, data.train_y = data.train_x[: cfg.data.limit_train], data.train_y[: cfg.data.limit_train]
    if cfg.data.limit_test:
        data.test_x, data.test_y = data.test_x[: cfg.data.limit_test], data.test_y[: cfg.data.limit_test]
    return data.to(device)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 8192) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on (x (N, n_in), y (N,)), in chunks."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), chunk):
        logits = model(x[i : i + chunk])
        loss_sum += F.cross_entropy(logits.float(), y[i : i + chunk], reduction="sum").item()
        correct += (logits.argmax(-1) == y[i : i + chunk]).sum().item()
    model.train(was_training)
    return {"loss": loss_sum / len(x), "acc": correct / len(x)}


class ImageTask:
    """Cross-entropy classification of flattened images with input perturbations (train.noise_std, ...)."""

    def __init__(self, cfg: DictConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.data = load_data(cfg, device)
        if cfg.model.d_input != self.data.train_x.shape[1]:
            raise ConfigError(f"config: model.d_input={cfg.model.d_input} but {cfg.data.name} images have {self.data.train_x.shape[1]} values")
        torch.manual_seed(cfg.seed)
        self.model: nn.Module = build_model(cfg.model).to(device)
        t = cfg.train
        if t.epochs < 1 or t.batch_size < 1:
            raise ConfigError(f"config: train.epochs and train.batch_size must be >= 1, got {t.epochs} and {t.batch_size}")
        self.n_train = len(self.data.train_x)
        self.batch_size = min(t.batch_size, self.n_train)
        self.steps_per_epoch = math.ceil(self.n_train / self.batch_size)
        self.total_steps = t.epochs * self.steps_per_epoch
        self.eval_every_steps = max(1, t.eval_every_epochs * self.steps_per_epoch)
        self.perturbations = build_perturbations(t, self.data.image_shape)
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed * 7919 + epoch)
            self._perm = torch.randperm(self.n_train, generator=gen, device=self.device)
            self._epoch = epoch
        return self._perm

    def train_batch(self, step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        epoch, i = divmod(step, self.steps_per_epoch)
        idx = self._permutation(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        x = self.data.train_x[idx]
        for perturb in self.perturbations:
            x = perturb(x, generator)
        return x, self.data.train_y[idx]

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor], generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        x, y = batch
        logits = model(x, generator=generator)  # the step's generator drives E7's hidden noise / dropout
        loss = F.cross_entropy(logits.float(), y)
        return loss, {"acc": (logits.argmax(-1) == y).float().mean().item()}

    def after_step(self, step: int) -> None:
        pass

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {f"test_{k}": v for k, v in evaluate_classifier(model, self.data.test_x, self.data.test_y).items()}

    def final_metrics(self, model: nn.Module) -> dict[str, Any]:
        """Clean (unperturbed) train and test metrics of the final model."""
        train = evaluate_classifier(model, self.data.train_x, self.data.train_y)
        test = evaluate_classifier(model, self.data.test_x, self.data.test_y)
        return {"train_loss": train["loss"], "train_acc": train["acc"], "test_loss": test["loss"], "test_acc": test["acc"],
                "n_train": self.n_train, "n_test": len(self.data.test_x)}

    def save_artifacts(self, run_dir) -> None:
        pass
