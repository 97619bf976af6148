"""Experiment loggers: ``none`` (the default) or ``wandb`` (which needs a mode; ENVIRONMENT.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bilinear.errors import ConfigError


class Logger:
    """Does nothing; the run directory's history.csv is always written anyway."""

    def log(self, row: dict[str, Any], step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger(Logger):
    def __init__(self, cfg: DictConfig, run_dir: Path):
        try:
            import wandb
        except ImportError:
            raise ConfigError("logger=wandb needs the wandb package: make install") from None
        mode = cfg.logger.mode or os.environ.get("WANDB_MODE", "offline")
        self.run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, mode=mode, dir=str(run_dir),
                              name=run_dir.name, config=OmegaConf.to_container(cfg, resolve=True))

    def log(self, row: dict[str, Any], step: int) -> None:
        self.run.log(row, step=step)

    def finish(self) -> None:
        self.run.finish()


def build_logger(cfg: DictConfig, run_dir: Path) -> Logger:
    name = cfg.logger.name
    if name == "none":
        return Logger()
    if name == "wandb":
        return WandbLogger(cfg, run_dir)
    raise ConfigError(f"config: logger must be none or wandb, got {name!r}")
