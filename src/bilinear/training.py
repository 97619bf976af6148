"""One training loop for every task: batches -> loss -> AdamW -> schedule; progress, logging, checkpoints.

A task (``bilinear.tasks``) supplies the data, the model and the objective; the loop knows nothing about
images or tokens. All randomness after model initialisation comes from a generator seeded by
``(seed, step)``, so a resumed run sees exactly the batches and noise an uninterrupted run would.

Resume is exact: a checkpoint carries, besides weights, optimizer and schedule, everything the loop keeps
between steps (the history rows, the running sums of the evaluation window in progress, the smoothed loss
of the divergence guard), so a resumed run writes the same weights and history as an uninterrupted one on
the same thread count and device. Checkpoints are transactions (``bilinear.rundir``).

**Divergence guard.** A checkpoint is a promise that training can continue from it. The weights after
step N are only judged by the loss they give, which is the next step's forward pass, so the checkpoint of
step N is committed right after that forward (before its backward; nothing else has changed since step N
ended) and only when that loss is finite and at most ``EXPLODE_FACTOR`` times the lowest smoothed training
loss so far (an exponential moving average with weight ``EMA_WEIGHT`` per step, so one lucky batch does not
set the bar) plus ``EXPLODE_FLOOR`` (so a loss near zero may wobble). A run that is blowing up (weights of
1e12 with a still-finite loss) therefore keeps its last sound checkpoint instead of one that diverges at
once on resume; a skipped checkpoint is logged (console and train.log), and ``train.stop_after_steps`` on such a step
is an error instead of a stop.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from bilinear import checkpoint, rundir
from bilinear.errors import ConfigError, TrainingError
from bilinear.loggers import Logger
from bilinear.tasks import Task


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """A generator whose stream depends only on (seed, step): the source of every per-step random draw."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


def lr_lambda(schedule: str, total_steps: int, warmup_steps: int):
    """Multiplier of the base lr at each step: ``cosine`` annealing or ``linear`` decay, after warmup."""
    if schedule not in ("cosine", "linear", "constant"):
        raise ConfigError(f"config: train.schedule must be cosine, linear or constant, got {schedule!r}")

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 1.0

    return f


def build_optimizer(model: torch.nn.Module, tcfg: DictConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=tuple(tcfg.betas)
    )


log = logging.getLogger(__name__)  # skipped checkpoints: console and, under `python -m train`, the run's train.log

EXPLODE_FACTOR = 10.0
EXPLODE_FLOOR = 1e-3
EMA_WEIGHT = 0.1


def fit(task: Task, cfg: DictConfig, run_dir: Path, logger: Logger, device: torch.device,
        writer: rundir.RunWriter | None = None) -> dict[str, Any]:
    """Train ``task.model`` for ``task.total_steps`` steps; write the run directory; return final metrics.

    ``writer``: the session's ``RunWriter`` (``train_command`` makes it under the folder's lock, after the
    start checks); without one (benchmarks), a fresh run is written into ``run_dir``.
    """
    tcfg, model = cfg.train, task.model
    total = task.total_steps
    if writer is None:
        writer = rundir.RunWriter(run_dir, device)
    optimizer = build_optimizer(model, tcfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tcfg.schedule, total, tcfg.warmup_steps))
    loop: dict[str, Any] = {"train_seconds": 0.0, "history": [], "running": {}, "count": 0, "window_seconds": 0.0,
                            "loss_ema": None, "best_loss_ema": None}
    start, checkpointed = 0, None  # checkpointed: step of the last committed checkpoint

    if tcfg.resume:
        saved = writer.load_checkpoint(model)
        if saved is not None:
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            start = checkpointed = int(saved["step"])
            loop.update({k: saved[k] for k in loop if k in saved})
            if start > total:
                raise ConfigError(f"train.resume=true: the config now ends at step {total}, before the checkpoint's "
                                  f"step {start}; train.epochs / train.tokens may only extend a run")
    resumed_seconds = loop["train_seconds"]  # seconds already spent before a resume: throughput counts this session only
    history = loop["history"]

    eval_every = task.eval_every_steps
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and tcfg.get("bf16", False) else nullcontext()
    )
    tokens_per_step = getattr(task, "tokens_per_step", None)  # LM tasks: report throughput in tokens/s
    stop_after = tcfg.get("stop_after_steps")  # stop early with a checkpoint; train.resume=true continues
    pending = None  # a step whose checkpoint waits for the loss of its weights (the next forward)
    bar = tqdm(range(start, total), initial=start, total=total, desc=cfg.task.name, dynamic_ncols=True, leave=False,
               disable=not tcfg.get("progress", True))
    model.train()
    for step in bar:
        t0 = time.perf_counter()
        gen = step_generator(cfg.seed, step, device)
        batch = task.train_batch(step, gen)
        with autocast:
            loss, stats = task.loss(model, batch, gen)
        loss_value = loss.item()
        if pending == step:  # the weights are still those after `step` steps, and loss_value is theirs
            t_io = time.perf_counter()
            if _sound(model, loss_value, loop["best_loss_ema"]):
                writer.commit_checkpoint(model, {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                                 "step": step, **loop}, step)
                checkpointed = step
            elif stop_after and step >= stop_after:
                raise TrainingError(f"not stopping at step {step}: {_unsound(loss_value, loop['best_loss_ema'])}; "
                                    f"{_kept(run_dir, checkpointed, bool(tcfg.checkpoint_every or stop_after))}")
            elif math.isfinite(loss_value):  # (a non-finite loss stops the run just below, with its own line)
                log.warning(f"no checkpoint at step {step}: {_unsound(loss_value, loop['best_loss_ema'])}; "
                            f"{_kept(run_dir, checkpointed, bool(tcfg.checkpoint_every or stop_after))}")
            pending = None
            t0 += time.perf_counter() - t_io  # writing is not training time
            if stop_after and step >= stop_after:
                bar.close()
                return {"stopped_at_step": step, "complete": False}
        if not math.isfinite(loss_value):
            raise TrainingError(f"loss became non-finite ({loss_value}) at step {step}; stopped, "
                                f"{_kept(run_dir, checkpointed, bool(tcfg.checkpoint_every or stop_after))}; try a lower train.lr")
        ema = loop["loss_ema"]
        loop["loss_ema"] = ema = loss_value if ema is None else (1 - EMA_WEIGHT) * ema + EMA_WEIGHT * loss_value
        loop["best_loss_ema"] = ema if loop["best_loss_ema"] is None else min(loop["best_loss_ema"], ema)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tcfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        optimizer.step()
        scheduler.step()
        task.after_step(step)
        step_seconds = time.perf_counter() - t0
        loop["train_seconds"] += step_seconds
        loop["window_seconds"] += step_seconds

        loop["count"] += 1
        running = loop["running"]
        for k, v in {"loss": loss_value, **stats}.items():
            running[k] = running.get(k, 0.0) + v
        done = step + 1
        if done % eval_every == 0 or done == total:
            count = loop["count"]
            row = {"step": done, "epoch": done / task.steps_per_epoch, "lr": scheduler.get_last_lr()[0],
                   "train_seconds": loop["train_seconds"]}
            row.update({f"train_{k}": v / count for k, v in running.items()})
            if tokens_per_step:
                row["tokens_per_s"] = tokens_per_step * count / max(loop["window_seconds"], 1e-9)
            row.update(task.evaluate(model))
            model.train()
            history.append(row)
            logger.log(row, step=done)
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k in ("train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "tokens_per_s")})
            loop.update(running={}, count=0, window_seconds=0.0)
        stopping = bool(stop_after) and done >= stop_after and done < total
        if (tcfg.checkpoint_every and done % tcfg.checkpoint_every == 0 and done < total) or stopping:
            pending = done
    bar.close()

    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise TrainingError(f"weights became non-finite by the last step; stopped, {_kept(run_dir, checkpointed, bool(tcfg.checkpoint_every or stop_after))}")
    train_seconds = loop["train_seconds"]
    metrics = task.final_metrics(model)
    epochs = total / task.steps_per_epoch
    metrics.update({"steps": total, "train_seconds": train_seconds, "seconds_per_epoch": train_seconds / max(epochs, 1e-9)})
    if tokens_per_step:
        metrics["tokens_per_s"] = tokens_per_step * (total - start) / max(train_seconds - resumed_seconds, 1e-9)
    writer.finish(model, history, history_fields(history), {**metrics, "complete": True}, total)
    logger.log({f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=total)
    return metrics


def history_fields(history: list[dict[str, Any]]) -> list[str]:
    """Column order of history.csv: the newest row's (written by this code), then any column only older rows
    have. Rows resumed from a pre-transaction history.json came back with sorted keys; this keeps the file's
    columns in the same order as an uninterrupted run's."""
    return list(dict.fromkeys(k for row in reversed(history) for k in row))


def _sound(model: torch.nn.Module, loss_value: float, best: float | None) -> bool:
    """The divergence guard (module docstring): may the current weights, whose loss is ``loss_value``, be kept?"""
    if not math.isfinite(loss_value) or not all(torch.isfinite(p).all() for p in model.parameters()):
        return False
    return best is None or loss_value <= EXPLODE_FACTOR * best + EXPLODE_FLOOR


def _unsound(loss_value: float, best: float | None) -> str:
    if not math.isfinite(loss_value):
        return f"the loss of its weights is {loss_value}"
    return (f"the loss of its weights, {loss_value:.4g}, is over {EXPLODE_FACTOR:g}x the best smoothed loss so far "
            f"({best:.4g}); the run is diverging")


def _kept(run_dir: Path, step: int | None, checkpointing: bool) -> str:
    if step is not None:
        return f"the last good checkpoint (step {step}) in {run_dir} is intact"
    if checkpointing:
        return "no sound checkpoint was reached"
    return "no checkpoint was written (set train.checkpoint_every to keep one)"
