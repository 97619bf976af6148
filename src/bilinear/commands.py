"""The bodies of ``python -m train`` and ``python -m analyze``; the entry scripts only call these."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from bilinear.config import check_against_yaml, resolve_device
from bilinear.errors import ConfigError


def train_command(cfg: DictConfig) -> Path:
    """Compose -> check -> lock the run folder -> refuse what would lose or misdescribe a run -> build the task
    -> fit. Returns the run directory.

    Every refusal comes before the first write into the folder (config.yaml included), and the folder's
    writer lock is held from the checks to the last write, so no second training can slip in between.
    """
    from hydra.core.hydra_config import HydraConfig

    from bilinear import rundir
    from bilinear.loggers import build_logger
    from bilinear.tasks import build_task
    from bilinear.training import fit

    check_against_yaml(cfg, "train")
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    resume = bool(cfg.train.resume)
    if resume and not _run_dir_given(hc):
        raise ConfigError("config: train.resume=true needs hydra.run.dir=<the run to continue>; without it the "
                          "run would start afresh in a new folder")
    with rundir.writer_lock(run_dir):
        rundir.check_start(run_dir, resume)
        device = resolve_device(cfg.device)
        task = build_task(cfg, device)  # writes nothing in run_dir; completes cfg (an SAE's layer, width, LM path)
        if resume:
            rundir.check_resume_config(run_dir, cfg)
        writer = rundir.RunWriter(run_dir, device, resume=resume)
        writer.begin(cfg, task, list(hc.overrides.task))  # config.yaml first, so even a failed run says what it was
        logger = build_logger(cfg, run_dir)
        try:
            fit(task, cfg, run_dir, logger, device, writer)
        finally:
            logger.finish()
    return run_dir


def _run_dir_given(hc) -> bool:
    """Whether the user named the output folder (hydra.run.dir, or hydra.sweep.dir for a sweep) rather than
    taking the timestamped default, which is always a new, empty folder."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in hc.overrides.hydra}
    return bool(keys & {"hydra.run.dir", "hydra.sweep.dir"})


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

