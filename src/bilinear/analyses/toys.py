"""Ground-truth toy tasks: E5 Casper (Fig 6, claim C9) and E10 Boolean gates (the authors' tutorial).

Both decompose output directions other than the class logits, so each checks its own decomposition
against the model's outputs on real inputs and records the error (DESIGN principle 3).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from bilinear import plots
from bilinear.analyses import register, write_json
from bilinear.decompose import abs_cosine, bias_interactions, decompose_outputs, interaction_matrices, reconstruct


def abs_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return abs_cosine(a.double().flatten(), b.double().flatten()).item()


def abs_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """|Pearson r|: the cosine after centering, so a uniform image scores 0 (the cosine with the mostly-negative
    target - complement = 2t - 1 is about 0.75 for ANY uniform image, which flatters that metric)."""
    a, b = a.double().flatten(), b.double().flatten()
    return abs_cos(a - a.mean(), b - b.mean())


def span_cos(basis: torch.Tensor, v: torch.Tensor) -> float:
    """cos of the angle between v (n,) and the span of the rows of basis (k, n): how well they express v."""
    Qb, _ = torch.linalg.qr(basis.double().T)  # (n, k) orthonormal
    v = v.double()
    return ((Qb.T @ v).norm() / v.norm().clamp_min(1e-30)).item()


# --- E5: Casper ------------------------------------------------------------------------------------


@register("casper", kinds=("casper",))
def casper(ctx, out: Path) -> dict:
    """Decompose the logit difference True - False (U = [[-1, 1]]) with the biases folded in.

    Metrics: lambda_1 / |lambda_2| (ordered by |lambda|), |cos| of the top eigenvector's pixel part with
    (target - complement) = 2t - 1, the label balance, and the bias interaction image b (n_pix,) with
    ``logit diff = x^T A x + b.x + c``.
    """
    from bilinear.tasks.casper import casper_target, load_casper_data

    form = ctx.form
    U = torch.tensor([[-1.0, 1.0]], dtype=torch.float64, device=ctx.device)
    eig = decompose_outputs(form, U)  # values (1, d+1), input_vectors (1, d+1, n_pix+1)
    data = load_casper_data(ctx.run_cfg, ctx.device)
    with torch.no_grad():
        logits = torch.cat([ctx.model(data.test_x[i : i + 4096]) for i in range(0, len(data.test_x), 4096)]).double()
        pred = torch.cat([reconstruct(eig, form.to_z(data.test_x[i : i + 4096])) for i in range(0, len(data.test_x), 4096)])
    exact = ctx.check_exact(pred[:, 0], logits[:, 1] - logits[:, 0], "the logit difference True - False")

    n_pix = data.train_x.shape[1]
    target = casper_target(data, int(ctx.run_cfg.data.target_index)).double()
    contrast = target - (1 - target)  # target (positive) against its complement (negative)
    vals = eig.values[0]
    top = eig.input_vectors[0, 0, :n_pix]  # pixel part; entry n_pix is the constant coordinate's weight
    _, bias_img, const = bias_interactions(form, interaction_matrices(form, U))  # (1, n_pix), (1,)
    frac_train, frac_test = data.train_y.double().mean().item(), data.test_y.double().mean().item()
    pos_idx, pos_vals = eig.positive(2)  # the most positive eigenvalues, whatever their rank by |lambda|
    top_pos = eig.input_vectors[0, pos_idx[0, 0], :n_pix]
    result = {
        **exact,
        "lambda_1": vals[0].item(), "lambda_2": vals[1].item(),
        "lambda1_over_abs_lambda2": (vals[0] / vals[1].abs()).item(),
        "top_is_positive": bool(vals[0] > 0),
        "n_positive_above_10pct": int((vals >= 0.1 * vals.abs().max()).sum()),
        "abs_cos_top_vs_target_minus_complement": abs_cos(top, contrast),
        "abs_cos_top_vs_target": abs_cos(top, target),
        "abs_cos_uniform_vs_target_minus_complement": abs_cos(torch.ones_like(contrast), contrast),
        # Pearson r with the target equals Pearson r with target - complement (2t - 1 is affine in t)
        "abs_corr_top_vs_target": abs_corr(top, target),
        "abs_corr_top_positive_vs_target": abs_corr(top_pos, target),
        "top_positive_lambda": pos_vals[0, 0].item(), "second_positive_lambda": pos_vals[0, 1].item(),
        "top_positive_rank_by_magnitude": int(pos_idx[0, 0]) + 1,
        "abs_cos_top_positive_vs_target_minus_complement": abs_cos(top_pos, contrast),
        "abs_cos_top_positive_vs_target": abs_cos(top_pos, target),
        # the target and the contrast may be split over the top pair (one + and one − eigenvalue)
        "cos_target_vs_top2_span": span_cos(eig.input_vectors[0, :2, :n_pix], target),
        "cos_target_minus_complement_vs_top2_span": span_cos(eig.input_vectors[0, :2, :n_pix], contrast),
        "abs_cos_bias_image_vs_target_minus_complement": abs_cos(bias_img[0], contrast),
        "bias_constant": const[0].item(),
        "frac_true_train": frac_train, "frac_true_test": frac_test,
        "target_index": int(ctx.run_cfg.data.target_index), "threshold": float(ctx.run_cfg.data.threshold),
        "test_acc": ctx.metrics.get("test_acc"),
    }

    shape = data.image_shape
    fig = plt.figure(figsize=(12, 4.6))
    grid = fig.add_gridspec(2, 6)
    plots.vector_image(fig.add_subplot(grid[0, 0]), target, shape, f"target (train #{result['target_index']})")
    plots.vector_image(fig.add_subplot(grid[1, 0]), contrast, shape, "target − complement")
    for j in range(4):
        plots.vector_image(fig.add_subplot(grid[j // 2, 1 + j % 2]), eig.input_vectors[0, j, :n_pix], shape,
                           f"eigvec {j + 1}: λ={vals[j]:.3g}")
    plots.vector_image(fig.add_subplot(grid[0, 3]), bias_img[0], shape, f"bias interaction\n(const {const[0]:.3g})")
    ax = fig.add_subplot(grid[:, 4:])
    plots.eigenvalue_bars(ax, vals, n=10, title=f"True − False: λ1/|λ2| = {result['lambda1_over_abs_lambda2']:.2f}")
    fig.add_subplot(grid[1, 3]).axis("off")
    fig.suptitle(f"Casper (E5): {100 * frac_train:.1f}% of training labels True; |cos(top, target − complement)| = "
                 f"{result['abs_cos_top_vs_target_minus_complement']:.2f}", fontsize=10)
    plots.save(fig, out / "casper.png")
    write_json(out / "casper.json", result)
    return result


# --- E10: Boolean gates ----------------------------------------------------------------------------


@register("gates", kinds=("gates",))
def gates(ctx, out: Path) -> dict:
    """The interaction matrix Q_o (n, n) of every output, checked on all 2^n Boolean inputs.

    Per output of gate g on pair (a, b): self-interactions Q_aa, Q_bb, cross-interaction Q_ab, and the
    largest |entry| outside the pair's 2x2 block; averaged per gate and compared with the exact structure.
    """
    from bilinear.tasks.gates import EXPECTED, all_inputs, output_names, pairs

    n, gate_list = int(ctx.run_cfg.data.n_inputs), list(ctx.run_cfg.data.gates)
    form = ctx.form
    Q = interaction_matrices(form, torch.eye(form.n_outputs, dtype=torch.float64, device=ctx.device))  # (o, d, d)
    x = all_inputs(n, ctx.device)
    with torch.no_grad():
        actual = ctx.model(x).double()
    eig = decompose_outputs(form, torch.eye(form.n_outputs, dtype=torch.float64, device=ctx.device))
    exact = ctx.check_exact(reconstruct(eig, form.to_z(x)), actual, "every gate output")
    Qx = Q[:, :n, :n]  # input-input block (the whole matrix without biases)

    names = output_names(n, gate_list)
    per_output, per_gate = {}, {g: {"self": [], "cross": [], "outside": []} for g in gate_list}
    for o, ((a, b), g) in enumerate(((p, g) for p in pairs(n) for g in gate_list)):
        block = torch.zeros(n, n, dtype=torch.bool, device=Qx.device)
        block[[a, a, b, b], [a, b, a, b]] = True
        entry = {"self_a": Qx[o, a, a].item(), "self_b": Qx[o, b, b].item(), "cross": Qx[o, a, b].item(),
                 "max_abs_outside": Qx[o][~block].abs().max().item() if (~block).any() else 0.0}
        per_output[names[o]] = entry
        per_gate[g]["self"] += [entry["self_a"], entry["self_b"]]
        per_gate[g]["cross"].append(entry["cross"])
        per_gate[g]["outside"].append(entry["max_abs_outside"])
    summary = {}
    for g, v in per_gate.items():
        exp_self, exp_cross = EXPECTED[g]
        summary[g] = {"mean_self": float(np.mean(v["self"])), "mean_cross": float(np.mean(v["cross"])),
                      "expected_self": exp_self, "expected_cross": exp_cross,
                      "max_deviation": float(max(max(abs(s - exp_self) for s in v["self"]),
                                                 max(abs(c - exp_cross) for c in v["cross"]), max(v["outside"])))}
    result = {**exact, "per_gate": summary, "per_output": per_output, "test_mse": ctx.metrics.get("test_mse")}

    ncols = len(gate_list)
    nrows = len(pairs(n))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols, 2.1 * nrows), squeeze=False)
    m = max(Qx.abs().max().item(), 1e-9)
    for o, ax in enumerate(axes.flat):
        arr = Qx[o].cpu().numpy()
        ax.imshow(arr, cmap=plots.CMAP, vmin=-m, vmax=m)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{arr[i, j]:.2f}", ha="center", va="center", fontsize=6)
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.tick_params(labelsize=6)
        ax.set_title(names[o], fontsize=8)
    fig.suptitle("Interaction matrices of every gate output (E10); AND: 0 / +½, OR: 1 / −½, XOR: 1 / −1", fontsize=10)
    fig.tight_layout()
    plots.save(fig, out / "gates.png")
    write_json(out / "gates.json", result)
    return result


# --- the report ------------------------------------------------------------------------------------
