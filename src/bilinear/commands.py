"""The bodies of ``python -m train`` and ``python -m analyze``; the entry scripts only call these."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from bilinear import checkpoint
from bilinear.config import check_against_yaml, resolve_device
from bilinear.errors import CheckpointError, ConfigError


def train_command(cfg: DictConfig) -> Path:
    """Compose -> check -> build the task -> fit -> run directory. Returns the run directory."""
    from hydra.core.hydra_config import HydraConfig

    from bilinear.loggers import build_logger
    from bilinear.tasks import build_task
    from bilinear.training import fit

    check_against_yaml(cfg, "train")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if checkpoint.is_complete(run_dir) and not cfg.train.resume:
        raise CheckpointError(f"{run_dir} already holds a finished run; choose another hydra.run.dir")
    device = resolve_device(cfg.device)
    task = build_task(cfg, device)
    checkpoint.save_config(run_dir, cfg)  # first, so even a failed run says what it was
    task.save_artifacts(run_dir)
    logger = build_logger(cfg, run_dir)
    try:
        fit(task, cfg, run_dir, logger, device)
    finally:
        logger.finish()
    return run_dir


def default_cross_out(runs: list[Path]) -> Path:
    """``<parent>/analysis`` when every run sits in one folder (a sweep's); otherwise the user must say.

    The common path of runs in different trees can be far above them (``/`` at worst), and nothing should
    be written there unasked.
    """
    parents = {r.resolve().parent for r in runs}
    if len(parents) != 1:
        raise ConfigError(f"config: the runs are in {len(parents)} different folders; say where the cross-run "
                          "analyses go with out=<folder>")
    return parents.pop() / "analysis"


def analyze_command(cfg: DictConfig) -> Path:
    """Run the requested analyses on one run (``ckpt=``) or across runs (``runs=[...]``)."""
    from bilinear.analyses import run_cross_analyses, run_run_analyses

    check_against_yaml(cfg, "analyze")
    if cfg.ckpt and cfg.runs:
        raise ConfigError("config: give either ckpt=<run> or runs=[...], not both")
    if cfg.ckpt:
        return run_run_analyses(Path(cfg.ckpt), cfg)
    if cfg.runs:
        runs = [Path(r) for r in cfg.runs]
        out = Path(cfg.out) if cfg.out else default_cross_out(runs)
        return run_cross_analyses(runs, out, cfg)
    raise ConfigError("config: say which run to analyse: ckpt=<run dir> (or runs=[<dir>,...] for cross-run analyses)")

