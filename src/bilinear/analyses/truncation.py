"""E4 / Fig 5B and Appendix F: the truncated classifier (claim C8).

``logit_c(x) ~ sum_{i<=k} lambda_ci (v_ci . z)^2`` keeps the k eigenpairs of largest |lambda| per class
(decompose.eigen_activations, ordered by |lambda|). Curves are for k = 0..truncation.k_max and k = full.

    truncation        (one run)    accuracy and error per k, the drop against the run's final accuracy, and a
                                   check that k = full reproduces the model's own predictions.
    truncation_sizes  (across)     Fig 5B: the curves per d_hidden with bands over seeds.

At k = 0 every logit is 0 and argmax returns class 0, so its accuracy is class 0's share of the test set.
The drop is measured against the final model's accuracy from the same run (PAPER.md §5: not an average
over epochs).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from bilinear import plots
from bilinear.analyses import register, write_json
from bilinear.decompose import eigen_activations, reconstruct

EXPERIMENT = "consistency"  # the sizes x seeds experiment (E4) that also feeds C8


@torch.no_grad()
def truncation_curve(ctx, k_max: int, chunk: int = 2048) -> dict:
    """Test accuracy of the top-k classifier of one run for k = 0..k_max and k = full.

    Returns accuracies (k_max + 1,), the full-k accuracy, and the model's own accuracy on the same inputs,
    computed now from its forward pass, with the number of inputs where full-k and model predictions differ.
    """
    eig, form, data = ctx.class_eigen, ctx.form, ctx.image_data
    k_max = min(k_max, eig.values.shape[1])
    x, y = data.test_x, data.test_y
    correct = torch.zeros(k_max + 1, dtype=torch.long)
    correct_full = correct_model = disagree = 0
    for i in range(0, len(x), chunk):
        xb, yb = x[i : i + chunk], y[i : i + chunk]
        z = form.to_z(xb)
        acts = eigen_activations(eig, z, k_max)  # (n, C, k_max)
        logits_k = torch.cat([torch.zeros_like(acts[..., :1]), acts.cumsum(-1)], dim=-1)  # (n, C, k_max + 1)
        correct += (logits_k.argmax(1) == yb[:, None]).sum(0).cpu()
        pred_full = reconstruct(eig, z).argmax(-1)
        pred_model = ctx.model(xb).argmax(-1)
        correct_full += (pred_full == yb).sum().item()
        correct_model += (pred_model == yb).sum().item()
        disagree += (pred_full != pred_model).sum().item()
    n = len(x)
    return {"k": list(range(k_max + 1)), "acc": (correct.double() / n).tolist(), "acc_full": correct_full / n,
            "acc_model": correct_model / n, "n_disagree_full_vs_model": disagree, "n_test": n,
            "d_hidden": eig.values.shape[1]}


def _k_within(acc: list[float], target: float, tol: float) -> int | None:
    """Smallest k whose accuracy is within ``tol`` of ``target``."""
    return next((k for k, a in enumerate(acc) if a >= target - tol), None)


@register("truncation", kinds=("image",))
def truncation(ctx, out: Path) -> dict:
    """E4 per run: accuracy of the top-k classifier, k = 0..k_max and full, and the drop against the final model."""
    curve = truncation_curve(ctx, int(ctx.cfg.truncation.k_max))
    final = ctx.metrics["test_acc"]  # the final model's accuracy recorded by training
    drop = [final - a for a in curve["acc"]]
    k = curve["k"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(k, [100 * (1 - a) for a in curve["acc"]], "o-", ms=3, label="top-k eigenpairs per class")
    axes[0].axhline(100 * (1 - curve["acc_full"]), color="k", ls="--", lw=0.8, label=f"k = full ({curve['d_hidden']})")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("k (eigenpairs per class, by |λ|)")
    axes[0].set_ylabel("test error %")
    axes[0].legend(fontsize=7)
    axes[1].plot(k[1:], [100 * d for d in drop[1:]], "o-", ms=3)
    axes[1].axhline(0, color="k", lw=0.5)
    axes[1].set_xlabel("k")
    axes[1].set_ylabel("accuracy drop vs final model (points)")
    fig.suptitle(f"{ctx.run_cfg.task.name}, d_hidden {curve['d_hidden']}: truncated classifier (final test acc "
                 f"{100 * final:.2f}%)", fontsize=9)
    fig.tight_layout()
    plots.save(fig, out / "truncation.png")
    result = {**curve, "final_test_acc": final, "drop": drop,
              "full_equals_model": curve["acc_full"] == curve["acc_model"],
              "k_within_0.1pt": _k_within(curve["acc"], curve["acc_full"], 0.001),
              "k_within_0.5pt": _k_within(curve["acc"], curve["acc_full"], 0.005)}
    write_json(out / "truncation.json", result)
    return result


@register("truncation_sizes", kinds=("image",), scope="cross")
def truncation_sizes(contexts, out: Path, cfg) -> dict:
    """Fig 5B / Appendix F: truncation curves per d_hidden, mean with a min-max band over seeds."""
    by_size: dict[int, list[dict]] = defaultdict(list)
    for ctx in contexts:
        c = truncation_curve(ctx, int(cfg.truncation.k_max))
        c["final_test_acc"] = ctx.metrics["test_acc"]
        c["seed"] = int(ctx.run_cfg.seed)
        by_size[int(ctx.run_cfg.model.d_hidden)].append(c)
        ctx.__dict__.pop("image_data", None)  # sweeps hold many runs; the data is reloaded when needed
    sizes = sorted(by_size)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    result: dict = {"sizes": sizes, "per_size": {}}
    for d in sizes:
        curves = by_size[d]
        k_max = min(len(c["acc"]) for c in curves) - 1
        k = np.arange(k_max + 1)
        err = np.array([[1 - a for a in c["acc"][: k_max + 1]] for c in curves])  # (seeds, k)
        drop = np.array([[c["final_test_acc"] - a for a in c["acc"][: k_max + 1]] for c in curves])
        plots.line_band(axes[0], k, 100 * err.mean(0), 100 * err.min(0), 100 * err.max(0), label=f"d={d}")
        plots.line_band(axes[1], k[1:], 100 * drop.mean(0)[1:], 100 * drop.min(0)[1:], 100 * drop.max(0)[1:], label=f"d={d}")
        full_err = np.array([1 - c["acc_full"] for c in curves])
        result["per_size"][str(d)] = {
            "n_seeds": len(curves), "seeds": [c["seed"] for c in curves], "error_mean": err.mean(0).tolist(),
            "error_min": err.min(0).tolist(), "error_max": err.max(0).tolist(), "drop_mean": drop.mean(0).tolist(),
            "full_error_mean": float(full_err.mean()), "final_test_acc_mean": float(np.mean([c["final_test_acc"] for c in curves])),
            "full_equals_model_all": all(c["acc_full"] == c["acc_model"] for c in curves),
        }
    axes[0].set_yscale("log")
    axes[0].set_xlabel("k (eigenpairs per class, by |λ|)")
    axes[0].set_ylabel("test error % (band: min-max over seeds)")
    axes[1].axhline(0, color="k", lw=0.5)
    axes[1].set_xlabel("k")
    axes[1].set_ylabel("accuracy drop vs final model (points)")
    axes[1].set_yscale("symlog", linthresh=0.1)
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle("Truncated classifier per model size (Fig 5B / Appendix F)", fontsize=10)
    fig.tight_layout()
    plots.save(fig, out / "truncation_sizes.png")
    write_json(out / "truncation_sizes.json", result)
    return result
