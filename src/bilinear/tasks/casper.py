"""E5, Casper's labeling challenge (PAPER.md §2, Fig 6): MNIST images relabeled by similarity to one image.

An image x is True (label 1) when cos(x, t) > threshold or cos(x, 1 - t) > threshold, for the target
image t = train_x[data.target_index] (the authors used training image 6, a "1") and its complement 1 - t;
otherwise False (label 0). The digit labels are discarded. Training is the image task's, unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from bilinear.dataio.images import ImageData
from bilinear.errors import ConfigError
from bilinear.tasks.image import ImageTask, load_data

CLASSES = ["False", "True"]


def casper_target(data: ImageData, index: int) -> Tensor:
    """The target image t (n_pix,) = training image ``index`` (of the run's possibly limited train set)."""
    if not 0 <= index < len(data.train_x):
        raise ConfigError(f"config: data.target_index={index} but the training set has {len(data.train_x)} images")
    return data.train_x[index]


def casper_labels(x: Tensor, target: Tensor, threshold: float) -> Tensor:
    """x (N, n_pix), target (n_pix,) -> labels (N,) int64: 1 where cos(x, t) or cos(x, 1 - t) exceeds threshold."""
    cos_t = torch.nn.functional.cosine_similarity(x, target[None], dim=-1)
    cos_c = torch.nn.functional.cosine_similarity(x, (1 - target)[None], dim=-1)
    return ((cos_t > threshold) | (cos_c > threshold)).long()


def relabel(data: ImageData, index: int, threshold: float) -> ImageData:
    """A copy of ``data`` with Casper labels on both splits and classes False/True."""
    t = casper_target(data, index)
    return ImageData(data.train_x, casper_labels(data.train_x, t, threshold), data.test_x,
                     casper_labels(data.test_x, t, threshold), data.image_shape, list(CLASSES), f"casper-{data.name}")


def load_casper_data(cfg: DictConfig, device: torch.device) -> ImageData:
    """The run's Casper dataset (for analyses): the run's image data, relabeled."""
    return relabel(load_data(cfg, device), int(cfg.data.target_index), float(cfg.data.threshold))


class CasperTask(ImageTask):
    """The image task on relabeled data; the model must have 2 outputs (index 1 = True)."""

    def __init__(self, cfg: DictConfig, device: torch.device):
        if cfg.model.n_classes != 2:
            raise ConfigError(f"config: the Casper task has 2 classes, got model.n_classes={cfg.model.n_classes}")
        super().__init__(cfg, device)  # loads the images and builds the model; labels are replaced below
        self.data = relabel(self.data, int(cfg.data.target_index), float(cfg.data.threshold))

    def final_metrics(self, model) -> dict[str, Any]:
        return {**super().final_metrics(model), "frac_true_train": self.data.train_y.float().mean().item(),
                "frac_true_test": self.data.test_y.float().mean().item()}
