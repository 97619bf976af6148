"""Benchmark (issue 2): one MNIST training epoch of our loop vs a bare PyTorch loop, same process.

Setting: d_hidden 512, batch 2048, 60k images, noise 0.5, AdamW + cosine, 2 CPU threads. Three loops
run interleaved (so machine noise hits all of them alike) and we report median seconds per epoch:
    ours     bilinear.training.fit on an ImageTask: its own timer of the training steps (the target's
             measure), and the whole fit() call including evaluation and writing the run directory
    bare     the minimal loop: permute, slice, add noise, forward, cross-entropy, backward, step
    loader   the paper's own style: a per-item Dataset + DataLoader collate (for comparison)
Target: ours / bare <= 1.25.   Usage: python scripts/bench_training.py [--epochs 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bilinear.loggers import Logger
from bilinear.models.image import ImageClassifier
from bilinear.tasks.image import ImageTask
from bilinear.training import fit


def config(epochs: int, data_root: str):
    return OmegaConf.create({
        "seed": 0, "task": {"name": "mnist", "kind": "image"},
        "data": {"name": "mnist", "root": data_root, "verify": False, "limit_train": None, "limit_test": None},
        "model": {"_target_": "bilinear.models.image.ImageClassifier", "d_input": 784, "d_hidden": 512, "n_classes": 10,
                  "n_layers": 1, "bias": False, "residual": False, "gate": None},
        "train": {"epochs": epochs, "batch_size": 2048, "lr": 1e-3, "weight_decay": 1.0, "betas": [0.9, 0.999],
                  "schedule": "cosine", "warmup_steps": 0, "grad_clip": None, "noise_std": 0.5, "eval_every_epochs": 1,
                  "checkpoint_every": 0, "resume": False, "progress": True},
    })


def ours(cfg) -> tuple[float, float, ImageTask]:
    """(training seconds per epoch as the loop times its steps, whole fit() wall seconds per epoch, task).

    The first covers everything a training step does (batch slicing, noise, forward, loss, backward, AdamW,
    schedule, statistics); the second adds what a bare loop does not do at all: the per-epoch test evaluation,
    the final clean train/test evaluation, and writing the run directory."""
    task = ImageTask(cfg, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        metrics = fit(task, cfg, Path(d), Logger(), torch.device("cpu"))
        return metrics["seconds_per_epoch"], (time.perf_counter() - t0) / cfg.train.epochs, task


def bare(x, y, epochs: int) -> float:
    torch.manual_seed(0)
    model = ImageClassifier(784, 512, 10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0)
    steps = epochs * -(-len(x) // 2048)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 2048):
            idx = perm[i : i + 2048]
            xb = x[idx] + 0.5 * torch.randn(len(idx), 784)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return (time.perf_counter() - t0) / epochs


class PerItem(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def loader(x, y, epochs: int) -> float:
    torch.manual_seed(0)
    model = ImageClassifier(784, 512, 10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0)
    dl = torch.utils.data.DataLoader(PerItem(x, y), batch_size=2048, shuffle=True)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in dl:
            loss = F.cross_entropy(model(xb + 0.5 * torch.randn_like(xb)), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return (time.perf_counter() - t0) / epochs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-root", default="data")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = config(a.epochs, a.data_root)
    cfg.train.progress = False
    times = {"ours": [], "ours_with_eval": [], "bare": [], "loader": []}
    for r in range(a.repeats):
        t, t_all, task = ours(cfg)
        times["ours"].append(t)
        times["ours_with_eval"].append(t_all)
        x, y = task.data.train_x, task.data.train_y
        times["bare"].append(bare(x, y, a.epochs))
        times["loader"].append(loader(x, y, a.epochs))
        print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.3f} s/epoch" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median s/epoch (threads={a.threads}, {len(x)} images, d_hidden 512, batch 2048): "
          + ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
    print(f"ratio ours/bare = {med['ours'] / med['bare']:.3f}  (target <= 1.25; training steps as the loop times them)")
    print(f"ratio ours_with_eval/bare = {med['ours_with_eval'] / med['bare']:.3f}  (adds per-epoch test evaluation, "
          f"final train+test evaluation and the run directory)")
    print(f"ratio loader/bare = {med['loader'] / med['bare']:.3f}  (the paper's per-item DataLoader style)")


if __name__ == "__main__":
    main()
