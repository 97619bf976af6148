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
        if mode == "online" and not _wandb_logged_in():
            raise ConfigError("logger=wandb with mode online needs a W&B login: run `wandb login` (or set "
                              "WANDB_API_KEY), or use logger.mode=offline and `wandb sync` later")
        try:
            self.run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, mode=mode, dir=str(run_dir),
                                  name=run_dir.name, config=OmegaConf.to_container(cfg, resolve=True))
        except wandb.errors.Error as e:  # UsageError, CommError, AuthenticationError: all user-side
            first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            raise ConfigError(f"logger=wandb could not start ({first}); try logger.mode=offline") from None

    def log(self, row: dict[str, Any], step: int) -> None:
        self.run.log(row, step=step)

    def finish(self) -> None:
        self.run.finish()


def _wandb_logged_in() -> bool:
    """An API key from the environment or from ``wandb login``'s netrc entry, without contacting the server."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def build_logger(cfg: DictConfig, run_dir: Path) -> Logger:
    name = cfg.logger.name
    if name == "none":
        return Logger()
    if name == "wandb":
        return WandbLogger(cfg, run_dir)
    raise ConfigError(f"config: logger must be none or wandb, got {name!r}")
