"""E10: Boolean gates of every pair of inputs, learned by ``head(left(x) * right(x))`` under MSE.

n Boolean inputs, each on with probability ``data.p_on``; one output per (pair i<j, gate) in the order
pairs-major, gates-minor. Batches are drawn fresh every step from the step's generator.

Ground truth (on Boolean inputs x_i^2 = x_i, so a quadratic form is a multilinear polynomial):
    AND = ab           -> Q_aa = Q_bb = 0, Q_ab = +1/2
    OR  = a + b - ab   -> Q_aa = Q_bb = 1, Q_ab = -1/2
    XOR = a + b - 2ab  -> Q_aa = Q_bb = 1, Q_ab = -1
and every entry outside the pair is 0.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from bilinear.errors import ConfigError
from bilinear.models.registry import build_model

GATES = {
    "and": lambda a, b: a * b,
    "or": lambda a, b: a + b - a * b,
    "xor": lambda a, b: a + b - 2 * a * b,
}
# (self-interaction of each input of the pair, cross-interaction Q_ab) for the structure checks.
EXPECTED = {"and": (0.0, 0.5), "or": (1.0, -0.5), "xor": (1.0, -1.0)}


def pairs(n: int) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(n), 2))


def output_names(n: int, gates: list[str]) -> list[str]:
    return [f"{g}({i},{j})" for i, j in pairs(n) for g in gates]


def gate_targets(x: Tensor, gates: list[str]) -> Tensor:
    """x (N, n) in {0, 1} -> targets (N, n_pairs * n_gates)."""
    cols = [GATES[g](x[:, i], x[:, j]) for i, j in pairs(x.shape[1]) for g in gates]
    return torch.stack(cols, -1)


def all_inputs(n: int, device=None) -> Tensor:
    """Every Boolean input pattern, (2^n, n) float."""
    codes = torch.arange(2**n, device=device)
    return ((codes[:, None] >> torch.arange(n, device=device)) & 1).float()


class GatesTask:
    def __init__(self, cfg: DictConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        d = cfg.data
        self.n, self.p_on, self.gates = int(d.n_inputs), float(d.p_on), list(d.gates)
        unknown = [g for g in self.gates if g not in GATES]
        if unknown or not self.gates:
            raise ConfigError(f"config: data.gates must be a non-empty list from {sorted(GATES)}, got {self.gates}")
        if not 2 <= self.n <= 16 or not 0 < self.p_on < 1:
            raise ConfigError(f"config: data.n_inputs must be in 2..16 and data.p_on in (0, 1), got {self.n}, {self.p_on}")
        n_out = len(pairs(self.n)) * len(self.gates)
        if cfg.model.d_input != self.n or cfg.model.d_output != n_out:
            raise ConfigError(f"config: with {self.n} inputs and {len(self.gates)} gates the model needs "
                              f"model.d_input={self.n} and model.d_output={n_out}, got {cfg.model.d_input} and {cfg.model.d_output}")
        # A model this small only loses to thread start-up and contention (measured 27x slower with 2
        # threads on a loaded 2-core machine), so the whole process runs single-threaded.
        torch.set_num_threads(1)
        torch.manual_seed(cfg.seed)
        self.model: nn.Module = build_model(cfg.model).to(device)
        t = cfg.train
        if t.steps < 1 or t.batch_size < 1:
            raise ConfigError(f"config: train.steps and train.batch_size must be >= 1, got {t.steps} and {t.batch_size}")
        self.total_steps = int(t.steps)
        self.eval_every_steps = max(1, int(t.eval_every_steps))
        self.steps_per_epoch = self.eval_every_steps  # no epochs on an infinite stream; one "epoch" = one eval
        self.batch_size = int(t.batch_size)
        self.eval_x = all_inputs(self.n, device)
        self.eval_y = gate_targets(self.eval_x, self.gates)

    def train_batch(self, step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x = (torch.rand(self.batch_size, self.n, generator=generator, device=self.device) < self.p_on).float()
        return x, gate_targets(x, self.gates)

    def loss(self, model: nn.Module, batch, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        x, y = batch
        loss = (model(x) - y).square().mean()
        return loss, {}

    def after_step(self, step: int) -> None:
        pass

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """MSE and rounded-output accuracy over all 2^n input patterns, each weighted equally."""
        pred = model(self.eval_x)
        return {"test_mse": (pred - self.eval_y).square().mean().item(),
                "test_acc": (pred.round() == self.eval_y).float().mean().item()}

    def final_metrics(self, model: nn.Module) -> dict[str, Any]:
        was = model.training
        model.eval()
        m = self.evaluate(model)
        model.train(was)
        return {**m, "n_inputs": self.n, "p_on": self.p_on, "gates": self.gates, "outputs": output_names(self.n, self.gates)}

    def save_artifacts(self, run_dir) -> None:
        pass
