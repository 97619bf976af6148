"""One training loop for every task: batches -> loss -> AdamW -> schedule; progress, logging, checkpoints.

A task (``bilinear.tasks``) supplies the data, the model and the objective; the loop knows nothing about
images or tokens. All randomness after model initialisation comes from a generator seeded by
``(seed, step)``, so a resumed run sees exactly the batches and noise an uninterrupted run would.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from bilinear import checkpoint
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


def fit(task: Task, cfg: DictConfig, run_dir: Path, logger: Logger, device: torch.device) -> dict[str, Any]:
    """Train ``task.model`` for ``task.total_steps`` steps; write the run directory; return final metrics."""
    tcfg, model = cfg.train, task.model
    total = task.total_steps
    optimizer = build_optimizer(model, tcfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tcfg.schedule, total, tcfg.warmup_steps))
    history: list[dict[str, Any]] = []
    start, train_seconds = 0, 0.0
    resumed_seconds = 0.0  # seconds already spent before a resume: throughput counts this session only

    state_path = run_dir / checkpoint.TRAIN_STATE
    if tcfg.resume and state_path.exists():
        state = checkpoint.load_train_state(state_path)
        checkpoint.load_weights(run_dir / checkpoint.WEIGHTS, model)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, train_seconds = int(state["step"]), float(state["train_seconds"])
        resumed_seconds = train_seconds
        history = checkpoint.read_json(run_dir / "history.json") if (run_dir / "history.json").exists() else []

    eval_every = task.eval_every_steps
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and tcfg.get("bf16", False) else nullcontext()
    )
    running: dict[str, float] = {}
    count, window_seconds = 0, 0.0
    tokens_per_step = getattr(task, "tokens_per_step", None)  # LM tasks: report throughput in tokens/s
    stop_after = tcfg.get("stop_after_steps")  # stop early with a checkpoint; train.resume=true continues
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
        if not math.isfinite(loss_value):
            kept = (f"the last good checkpoint in {run_dir} is intact" if state_path.exists()
                    else "no checkpoint was written (set train.checkpoint_every to keep one)")
            raise TrainingError(f"loss became non-finite ({loss_value}) at step {step}; stopped, {kept}; try a lower train.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tcfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        optimizer.step()
        scheduler.step()
        task.after_step(step)
        step_seconds = time.perf_counter() - t0
        train_seconds += step_seconds
        window_seconds += step_seconds

        count += 1
        for k, v in {"loss": loss_value, **stats}.items():
            running[k] = running.get(k, 0.0) + v
        done = step + 1
        if done % eval_every == 0 or done == total:
            row = {"step": done, "epoch": done / task.steps_per_epoch, "lr": scheduler.get_last_lr()[0],
                   "train_seconds": train_seconds}
            row.update({f"train_{k}": v / count for k, v in running.items()})
            if tokens_per_step:
                row["tokens_per_s"] = tokens_per_step * count / max(window_seconds, 1e-9)
            row.update(task.evaluate(model))
            model.train()
            history.append(row)
            logger.log(row, step=done)
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k in ("train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "tokens_per_s")})
            running, count, window_seconds = {}, 0, 0.0
        stopping = bool(stop_after) and done >= stop_after and done < total
        if (tcfg.checkpoint_every and done % tcfg.checkpoint_every == 0 and done < total) or stopping:
            _save_progress(run_dir, task, optimizer, scheduler, done, train_seconds, history)
        if stopping:
            bar.close()
            return {"stopped_at_step": done, "complete": False}
    bar.close()

    metrics = task.final_metrics(model)
    epochs = total / task.steps_per_epoch
    metrics.update({"steps": total, "train_seconds": train_seconds, "seconds_per_epoch": train_seconds / max(epochs, 1e-9)})
    if tokens_per_step:
        metrics["tokens_per_s"] = tokens_per_step * (total - start) / max(train_seconds - resumed_seconds, 1e-9)
    checkpoint.save_weights(run_dir / checkpoint.WEIGHTS, model)
    checkpoint.write_csv(run_dir / checkpoint.HISTORY, history)
    if state_path.exists():
        state_path.unlink()  # a finished run has nothing to resume; its weights are final
    checkpoint.write_json(run_dir / checkpoint.METRICS, {**metrics, "complete": True})
    logger.log({f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=total)
    return metrics


def _save_progress(run_dir, task, optimizer, scheduler, step, train_seconds, history) -> None:
    """Weights first, then the state that points at them, each written atomically.

    Non-finite weights are never written: the previous checkpoint must stay the last good one.
    """
    if not all(torch.isfinite(p).all() for p in task.model.parameters()):
        raise TrainingError(f"weights became non-finite before step {step}; stopped, the last good checkpoint in {run_dir} is intact")
    checkpoint.save_weights(run_dir / checkpoint.WEIGHTS, task.model)
    checkpoint.write_json(run_dir / "history.json", history)
    checkpoint.save_train_state(
        run_dir / checkpoint.TRAIN_STATE,
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
         "train_seconds": train_seconds},
    )
