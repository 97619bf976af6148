"""E14 / claim C16: bilinear against ReGLU and SwiGLU MLPs in the same transformer (PAPER.md Appendix I, Table 6).

Called across runs: ``python -m analyze runs=[<bilinear>,<reglu>,<swiglu>,...] analyses=[gated_comparison]``.
Runs are grouped by budget: ``equal_tokens`` (same ``train.tokens``) and ``equal_time`` (runs trained with
``train.time_budget_s``). Final held-out losses per budget are reported as run.

Equal time is NOT read from those runs' wall clocks: on a shared machine a variant that trained while another job
ran got fewer tokens for its seconds, and that decided the comparison once. Instead this analysis measures each
variant's training throughput itself, interleaved in one process (:func:`calibrate`: the same machine state for
every variant in a round, so load cancels in their ratio), converts a common time budget into each variant's
fair token count, and reads its loss there between the final losses of its two fully-scheduled runs
(:func:`equal_time_losses`). The spread over calibration rounds gives the gap's range. The verdict is
``bilinear.claims``'s; the paper's numbers are in ``bilinear.claims_table``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bilinear import checkpoint, plots
from bilinear.analyses import register, write_json
from bilinear.claims_table import paper

ORDER = ("bilinear", "reglu", "swiglu")


def run_summary(run_dir: Path) -> dict[str, Any]:
    """What C16 needs from one finished LM run directory."""
    cfg = checkpoint.load_config(run_dir)
    m = checkpoint.read_json(run_dir / checkpoint.METRICS)
    budget = "equal_time" if cfg.train.get("time_budget_s") else "equal_tokens"
    return {"run": str(run_dir), "mlp": cfg.model.mlp, "budget": budget, "val_loss": m.get("val_loss"),
            "tokens": m.get("tokens"), "train_seconds": m.get("train_seconds"), "tokens_per_s": m.get("tokens_per_s"),
            "rule_acc_min": m.get("rule_acc_min"), "time_budget_s": cfg.train.get("time_budget_s")}


def compare(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Per budget: loss of each variant, bilinear's gap to the best gated variant (relative), tokens and seconds."""
    out: dict[str, Any] = {}
    for budget in ("equal_tokens", "equal_time"):
        rows = {s["mlp"]: s for s in summaries if s["budget"] == budget}
        if not rows:
            continue
        loss = {k: rows[k]["val_loss"] for k in ORDER if k in rows}
        gated = [loss[k] for k in ("reglu", "swiglu") if k in loss]
        gap = (loss["bilinear"] - min(gated)) / min(gated) if "bilinear" in loss and gated else None
        out[budget] = {"val_loss": loss, "bilinear_rel_gap_to_best_gated": gap,
                       "tokens": {k: rows[k]["tokens"] for k in loss},
                       "train_seconds": {k: rows[k]["train_seconds"] for k in loss},
                       "tokens_per_s": {k: rows[k]["tokens_per_s"] for k in loss},
                       "rule_acc_min": {k: rows[k]["rule_acc_min"] for k in loss},
                       "paper_val_loss": paper("C16")[budget]}
    return out


def calibrate(models: dict[str, torch.nn.Module], batch_size: int, n_ctx: int, vocab: int, rounds: int, steps: int,
              device: torch.device, bf16: bool = False) -> dict[str, list[float]]:
    """Training throughput (tokens/s) of each model, measured interleaved: ``{name: [tokens/s per round]}``.

    One training step is a forward pass on a (batch_size, n_ctx) batch of random tokens, the cross-entropy, the
    backward pass and an AdamW step (lr 0, on a copy: the run's weights are untouched). Each round times ``steps``
    steps of every model in turn, rotating the order, so a load that comes and goes hits all variants alike
    within a round and their per-round RATIO stays what the models cost, not what the machine was doing.
    """
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, vocab, (batch_size, n_ctx + 1), generator=gen).to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and bf16 else contextlib.nullcontext()
    copies = {k: copy.deepcopy(m).train().requires_grad_(True) for k, m in models.items()}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=0.0) for k, m in copies.items()}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(k: str) -> None:
        with autocast:
            logits = copies[k](batch[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        opts[k].zero_grad(set_to_none=True)
        loss.backward()
        opts[k].step()

    with torch.enable_grad():
        for k in copies:  # warm-up: first-call allocations and kernel selection are not throughput
            step(k)
        names, out = list(copies), {k: [] for k in copies}
        for r in range(rounds):
            for k in names[r % len(names):] + names[: r % len(names)]:
                sync()
                t0 = time.perf_counter()
                for _ in range(steps):
                    step(k)
                sync()
                out[k].append(steps * batch_size * n_ctx / (time.perf_counter() - t0))
    return out


def _loss_at(points: list[tuple[float, float]], tokens: float) -> tuple[float, bool]:
    """Final loss at ``tokens``, linear in log(tokens) through the (tokens, final loss) of two fully-scheduled runs.

    Both points are runs whose learning-rate schedule ended at their own budget, so the line compares like with
    like (reading a longer run's curve mid-schedule would not). Returns (loss, extrapolated)."""
    (n0, l0), (n1, l1) = sorted(points)
    if n1 <= n0:
        return l0, tokens != n0
    slope = (l1 - l0) / (math.log(n1) - math.log(n0))
    inside = n0 * (1 - 1e-9) <= tokens <= n1 * (1 + 1e-9)  # an endpoint reached through a product is still inside
    return l0 + slope * (math.log(tokens) - math.log(n0)), not inside


def equal_time_losses(points: dict[str, dict[str, tuple[float, float]]], speed: dict[str, float]) -> dict[str, Any]:
    """Each variant's loss at one common training time, from throughput measured in isolation.

    Args:
        points: per variant, ``{"equal_tokens": (tokens, final loss), "equal_time": (tokens, final loss)}``.
        speed: per variant, tokens/s relative to bilinear (from :func:`calibrate`).
    The common budget (in bilinear-token units) is the geometric mean over variants of equal-time tokens / speed:
    the time the equal-time runs had on average, measured in isolated time. A variant's fair tokens are budget x
    speed; its loss there comes from :func:`_loss_at`. Returns fair tokens, losses, extrapolation flags and the
    relative gap of bilinear to the best gated variant.
    """
    budget = math.exp(sum(math.log(points[k]["equal_time"][0] / speed[k]) for k in points) / len(points))
    fair = {k: budget * speed[k] for k in points}
    at = {k: _loss_at([points[k]["equal_tokens"], points[k]["equal_time"]], fair[k]) for k in points}
    loss = {k: at[k][0] for k in points}
    gated = [loss[k] for k in points if k != "bilinear"]
    gap = (loss["bilinear"] - min(gated)) / min(gated) if "bilinear" in loss and gated else None
    return {"fair_tokens": fair, "loss": loss, "extrapolated": {k: at[k][1] for k in points}, "gap": gap}


def calibrated_equal_time(runs, ccfg) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(calibration, equal_time_calibrated) for runs that hold an equal-token AND an equal-time run of every variant
    (else (None, None): there is nothing to interpolate between)."""
    by: dict[str, dict[str, Any]] = {}
    for ctx in runs:
        s = run_summary(ctx.run_dir)
        by.setdefault(s["mlp"], {})[s["budget"]] = (ctx, s)
    variants = [k for k in ORDER if k in by and len(by[k]) == 2]
    if "bilinear" not in variants or len(variants) < 2:
        return None, None
    ref_ctx = by["bilinear"]["equal_tokens"][0]
    t = ref_ctx.run_cfg.train
    batch = int(ccfg.batch_size or t.batch_size)
    thr = calibrate({k: by[k]["equal_tokens"][0].model for k in variants}, batch, int(ref_ctx.run_cfg.model.n_ctx),
                    int(ref_ctx.model.vocab_size), int(ccfg.rounds), int(ccfg.steps), ref_ctx.device,
                    bool(t.get("bf16", False)))
    ratios = [{k: thr[k][r] / thr["bilinear"][r] for k in variants} for r in range(int(ccfg.rounds))]
    median = {k: sorted(x[k] for x in ratios)[len(ratios) // 2] for k in variants}
    points = {k: {b: (float(by[k][b][1]["tokens"]), float(by[k][b][1]["val_loss"])) for b in ("equal_tokens", "equal_time")}
              for k in variants}
    central = equal_time_losses(points, median)
    gaps = [equal_time_losses(points, r)["gap"] for r in ratios]
    calibration = {"device": str(ref_ctx.device), "rounds": int(ccfg.rounds), "steps": int(ccfg.steps), "batch_size": batch,
                   "tokens_per_s": thr,
                   "ratio_to_bilinear": {k: {"median": median[k], "min": min(x[k] for x in ratios),
                                             "max": max(x[k] for x in ratios)} for k in variants}}
    return calibration, {**central, "gap_lo": min(gaps), "gap_hi": max(gaps), "gap_per_round": gaps}


@register("gated_comparison", kinds=("lm",), scope="cross")
def gated_comparison(runs, out: Path, cfg) -> dict:
    dirs = [ctx.run_dir for ctx in runs]
    calibration, calibrated = calibrated_equal_time(runs, cfg.gated_comparison)
    row = {"claim": "C16", "details": compare([run_summary(d) for d in dirs]), "calibration": calibration,
           "equal_time_calibrated": calibrated}
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for d in dirs:
        s, hist = run_summary(d), checkpoint.read_history(d)
        if not hist or "val_loss" not in hist[0]:
            continue
        style = "-" if s["budget"] == "equal_tokens" else "--"
        label = f"{s['mlp']} ({s['budget'].replace('_', ' ')})"
        tokens = [h["step"] * s["tokens"] / max(hist[-1]["step"], 1) for h in hist]
        axes[0].plot(tokens, [h["val_loss"] for h in hist], style, label=label)
        axes[1].plot([h["train_seconds"] for h in hist], [h["val_loss"] for h in hist], style, label=label)
    axes[0].set(xlabel="tokens", ylabel="held-out loss", yscale="log")
    axes[1].set(xlabel="training seconds (noisy: shared CPU)", yscale="log")
    axes[0].legend(fontsize=7)
    fig.suptitle("E14: bilinear vs ReGLU vs SwiGLU", fontsize=10)
    plots.save(fig, out / "gated_comparison.png")
    write_json(out / "c16.json", row)
    return row
