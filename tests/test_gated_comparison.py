"""C16's equal-time comparison (issue 12, 2b): throughput measured interleaved in one process, and the loss at a
common time read between each variant's fully-scheduled runs, so machine load during training cannot decide it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from bilinear.analyses.gated_comparison import calibrate, calibrated_equal_time, equal_time_losses


def law(a: float, n: float, slope: float = 0.05) -> float:
    """A final loss that falls log-linearly with the token budget: a - slope * ln(n)."""
    return a - slope * math.log(n)


def points(tokens: int, time_tokens: dict[str, float], offsets: dict[str, float]) -> dict:
    return {k: {"equal_tokens": (tokens, law(offsets[k], tokens)), "equal_time": (n, law(offsets[k], n))}
            for k, n in time_tokens.items()}


def test_equal_time_gap_does_not_move_with_the_tokens_a_loaded_machine_gave_the_timed_runs():
    """Same loss law slope for every variant: the equal-time gap depends on the isolated speeds alone. A run that
    trained while the machine was busy got fewer tokens for its seconds; the wall-clock gap moves, this one does not."""
    offsets = {"bilinear": 2.0, "reglu": 1.99, "swiglu": 1.985}
    speed = {"bilinear": 1.0, "reglu": 0.9, "swiglu": 0.8}
    quiet = {k: 1e6 * s for k, s in speed.items()}  # fair shares of one budget
    busy = {**quiet, "bilinear": 0.7e6}  # bilinear's timed run lost 30% of its tokens to another job
    a = equal_time_losses(points(2_000_000, quiet, offsets), speed)
    b = equal_time_losses(points(2_000_000, busy, offsets), speed)
    diff = lambda r: r["loss"]["bilinear"] - min(r["loss"]["reglu"], r["loss"]["swiglu"])  # noqa: E731
    assert diff(a) == pytest.approx(diff(b), abs=1e-12)
    assert a["gap"] == pytest.approx(b["gap"], rel=0.01)  # relative: the common budget moved, so the denominator did
    wall = lambda t: (law(offsets["bilinear"], t["bilinear"]) - min(law(offsets[k], t[k]) for k in ("reglu", "swiglu")))  # noqa: E731
    assert abs(wall(busy) - wall(quiet)) > 0.01  # as-run losses would have flipped a 3% tolerance
    assert not any(a["extrapolated"].values())


def test_interpolation_between_two_final_losses_flags_extrapolation():
    from bilinear.analyses.gated_comparison import _loss_at

    pts = [(100.0, 1.0), (50.0, 1.2)]
    loss, extra = _loss_at(pts, math.sqrt(100.0 * 50.0))  # halfway in log tokens
    assert loss == pytest.approx(1.1) and not extra
    loss, extra = _loss_at(pts, 200.0)  # beyond the longer run: the line keeps falling, and it is said
    assert loss == pytest.approx(0.8) and extra


class ToyLM(nn.Module):
    """Tokens -> logits through ``depth`` hidden matmuls: its cost grows with depth."""

    def __init__(self, vocab: int, width: int, depth: int):
        super().__init__()
        self.vocab_size = vocab
        self.embed = nn.Embedding(vocab, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return self.head(h)


def test_calibration_ranks_a_costlier_model_slower_and_leaves_weights_alone():
    torch.manual_seed(0)
    cheap, costly = ToyLM(64, 64, 1), ToyLM(64, 64, 16)
    before = [p.clone() for p in costly.parameters()]
    thr = calibrate({"bilinear": cheap, "swiglu": costly}, batch_size=8, n_ctx=32, vocab=64, rounds=3, steps=2,
                    device=torch.device("cpu"))
    assert set(thr) == {"bilinear", "swiglu"} and all(len(v) == 3 for v in thr.values())
    ratios = sorted(s / b for s, b in zip(thr["swiglu"], thr["bilinear"]))
    assert ratios[1] < 0.8  # median round: the 16-layer model is clearly slower
    assert all(torch.equal(a, b) for a, b in zip(before, costly.parameters()))


def fake_lm_run(root: Path, mlp: str, timed: bool, tokens: int, loss: float, depth: int) -> SimpleNamespace:
    run = root / f"{mlp}{'_time' if timed else ''}"
    run.mkdir(parents=True)
    cfg = {"task": {"kind": "lm"}, "model": {"mlp": mlp, "n_ctx": 16},
           "train": {"batch_size": 4, "time_budget_s": 1.0 if timed else None, "bf16": False}}
    OmegaConf.save(OmegaConf.create(cfg), run / "config.yaml")
    (run / "metrics.json").write_text(json.dumps({"val_loss": loss, "tokens": tokens, "train_seconds": 1.0, "complete": True}))
    return SimpleNamespace(run_dir=run, run_cfg=OmegaConf.create(cfg), model=ToyLM(32, 32, depth), device=torch.device("cpu"))


def test_calibrated_equal_time_needs_both_runs_of_every_variant(tmp_path):
    ccfg = OmegaConf.create({"rounds": 3, "steps": 1, "batch_size": None})
    runs = [fake_lm_run(tmp_path, "bilinear", False, 1000, 1.0, 1), fake_lm_run(tmp_path, "bilinear", True, 800, 1.05, 1),
            fake_lm_run(tmp_path, "swiglu", False, 1000, 0.99, 4), fake_lm_run(tmp_path, "swiglu", True, 600, 1.08, 4)]
    cal, eq = calibrated_equal_time(runs, ccfg)
    assert cal["rounds"] == 3 and set(cal["ratio_to_bilinear"]) == {"bilinear", "swiglu"}
    assert eq["gap_lo"] <= eq["gap"] <= eq["gap_hi"] and len(eq["gap_per_round"]) == 3
    assert calibrated_equal_time(runs[:3], ccfg) == (None, None)  # swiglu has no timed run: nothing to interpolate
