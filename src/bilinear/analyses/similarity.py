"""Issue 17 (beyond the paper): exact weight-only similarity between runs, a data-free view of C7 and C5/C6.

    python -m analyze runs=[<run>,...] analyses=[similarity] out=<dir>

Each run's layer is the symmetric tensor B (o, n, n) in its input space (pixels, with the embedding folded in:
hidden bases of two runs are unrelated). The cosine <B_a, B_b> / (||B_a|| ||B_b||) between two runs, and the same per
class (one interaction matrix Q_c per class), come from Gram matrices of the factors (``bilinear.similarity``), never
from B. No data is read: the only check is that the weights' bilinear form reproduces each model's outputs on random
inputs (recorded with the exactness checks).

Runs are grouped by the config values that differ between them, the seed aside (d_hidden for the E4 consistency
runs, weight decay x noise for the E3 grid). Outputs (similarity/):
    similarity.json   the run x run matrix (whole tensor and per class), per group the seed-pair cosines (never a
                      run with itself), the group x group matrix, and the cosine of every run to a reference run
    similarity.png    the run x run matrix; seed-pair cosine per group against the eigenvector |cos| of E4 when a
                      consistency analysis of the same runs sits beside it (consistency/consistency.json); per-class
                      cosines; without seed pairs, the cosine to the reference over the grid
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from omegaconf import OmegaConf

from bilinear import checkpoint, plots
from bilinear.analyses import register, write_json
from bilinear.errors import ConfigError
from bilinear.similarity import InputFactors, input_factors, similarity_matrix

N_RANDOM_INPUTS = 64  # random inputs on which each run's bilinear form is checked against its model
# config keys that never make two runs different models (where files go, logging, progress bars)
IGNORED_KEYS = ("seed", "device", "data_root", "data.root", "data.verify", "logger.", "train.progress", "scale.name",
                "train.resume", "train.checkpoint_every", "train.eval_every_epochs")


def checked_factors(ctx) -> InputFactors:
    """The run's factors in input space (``similarity.input_factors``), after checking that its bilinear form
    reproduces the model on random inputs in [0, 1] (data-free; recorded with the exactness checks, DESIGN 3)."""
    form = ctx.form  # float64; non-finite weights are a recorded ExactnessError
    n_raw = form.W.shape[1] if form.embed is None else form.embed.shape[1]
    n_raw -= int(form.homogeneous)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N_RANDOM_INPUTS, n_raw, generator=g, dtype=torch.float64)
    with torch.no_grad():
        actual = ctx.model(x.to(device=ctx.device, dtype=torch.float32)).double().cpu()
    predicted = form.forward(x.to(form.W.device)).cpu()
    ctx.check_exact(predicted, actual, f"bilinear form on {N_RANDOM_INPUTS} random inputs (similarity)")
    return input_factors(form)


def _flat(cfg) -> dict[str, object]:
    out: dict[str, object] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node if not isinstance(node, list) else tuple(node)

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def varying_keys(configs: list) -> list[str]:
    """Config keys (dotted) whose values differ between runs, the seed and bookkeeping keys aside, in config order."""
    flats = [_flat(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    ignored = lambda k: any(k == p or (p.endswith(".") and k.startswith(p)) for p in IGNORED_KEYS) or "_target_" in k  # noqa: E731
    return [k for k in keys if not ignored(k) and len({repr(f.get(k)) for f in flats}) > 1]


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe_runs(contexts) -> tuple[list[dict], list[str]]:
    """Per run: name, seed and the values of the varying keys; and those keys."""
    keys = varying_keys([c.run_cfg for c in contexts])
    runs = []
    for c in contexts:
        flat = _flat(c.run_cfg)
        params = {k: flat.get(k) for k in keys}
        runs.append({"name": c.run_dir.name, "dir": str(c.run_dir.resolve()), "seed": int(c.run_cfg.get("seed", 0)),
                     "params": params, "group": ", ".join(f"{_short(k)}={_fmt(v)}" for k, v in params.items()) or "all"})
    return runs, keys


def _sort_key(params: dict) -> tuple:
    return tuple((0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v)) for v in params.values())


def _eigen_cosines(out: Path, groups: dict[str, dict]) -> dict[str, dict[str, float]]:
    """E4's eigenvector |cos| between seeds per size (``top1``: the i = 1 vectors by |lambda|, C7's number;
    ``top_positive``: the most positive ones), from a consistency analysis of the same runs beside this one
    (consistency/consistency.json); {} when there is none or it was made from other runs."""
    path = out.parent / "consistency" / "consistency.json"
    if not path.exists():
        return {}
    per_size = checkpoint.read_json(path).get("per_size", {})
    found = {}
    for label, g in groups.items():
        sizes = {r["params"].get("model.d_hidden") for r in g["runs"]}
        if len(sizes) != 1:
            continue
        s = per_size.get(str(sizes.pop()))
        if s and sorted(s.get("seeds", [])) == sorted(r["seed"] for r in g["runs"]):
            found[label] = {"top1": float(s["top1"]), "top_positive": float(s["top_positive"])}
    return found


@register("similarity", kinds=("image", "casper", "gates"), scope="cross")
def similarity(contexts, out: Path, cfg) -> dict:
    """Whole-tensor and per-class cosines between runs, seed pairs per group, and cosines to a reference run."""
    if len(contexts) < 2:
        raise ConfigError("config: similarity compares runs; give at least two in runs=[...]")
    runs, keys = describe_runs(contexts)
    factors = [checked_factors(c) for c in contexts]
    outs = {f.P.shape[0] for f in factors}
    ins = {f.n_raw for f in factors}
    if len(outs) != 1 or len(ins) != 1:
        raise ConfigError(f"config: similarity needs runs with the same inputs and outputs; got {sorted(ins)} inputs and "
                          f"{sorted(outs)} outputs")
    order = sorted(range(len(runs)), key=lambda i: (_sort_key(runs[i]["params"]), runs[i]["seed"], runs[i]["name"]))
    runs, factors = [runs[i] for i in order], [factors[i] for i in order]
    total, per_class = similarity_matrix(factors)  # (R, R), (C, R, R)
    del factors
    n_classes = per_class.shape[0]

    by_group: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(runs):
        by_group[r["group"]].append(i)
    labels = list(by_group)
    groups: dict[str, dict] = {}
    for label, idx in by_group.items():
        # seed pairs only: two runs of one group with different seeds, never a run with itself (PAPER.md §5)
        pairs = [(i, j) for i, j in itertools.combinations(idx, 2) if runs[i]["seed"] != runs[j]["seed"]]
        g = {"params": runs[idx[0]]["params"], "runs": [runs[i] for i in idx], "seeds": [runs[i]["seed"] for i in idx],
             "n_pairs": len(pairs)}
        if pairs:
            vals = np.array([float(total[i, j]) for i, j in pairs])
            pc = np.stack([per_class[:, i, j].numpy() for i, j in pairs])  # (pairs, C)
            g.update({"seed_pair_mean": float(vals.mean()), "seed_pair_min": float(vals.min()),
                      "seed_pair_max": float(vals.max()), "seed_pairs": vals.tolist(),
                      "per_class_mean": pc.mean(0).tolist(), "per_class_min": pc.min(0).tolist(),
                      "per_class_mean_over_classes": float(pc.mean())})
        groups[label] = g
    G = len(labels)
    group_matrix = np.full((G, G), np.nan)
    for a, b in itertools.combinations_with_replacement(range(G), 2):
        ia, ib = by_group[labels[a]], by_group[labels[b]]
        vals = [float(total[i, j]) for i in ia for j in ib if i != j and (a != b or runs[i]["seed"] != runs[j]["seed"])]
        if vals:
            group_matrix[a, b] = group_matrix[b, a] = float(np.mean(vals))
    # the reference: the run with the largest value of every varying key (the widest model; the most regularised
    # cell of a wd x noise grid), lowest seed
    ref = max(range(len(runs)), key=lambda i: (_sort_key(runs[i]["params"]), -runs[i]["seed"]))
    eigen = _eigen_cosines(out, groups)

    _plot(out, runs, labels, groups, total, per_class, ref, keys, eigen)
    seed_pair = {k: g["seed_pair_mean"] for k, g in groups.items() if "seed_pair_mean" in g}
    result = {
        "runs": [{k: r[k] for k in ("name", "seed", "params", "group")} for r in runs], "varying": keys,
        "n_classes": n_classes, "matrix": total.tolist(), "per_class_matrix": per_class.tolist(),
        "groups": {k: {kk: vv for kk, vv in g.items() if kk != "runs"} | {"runs": [r["name"] for r in g["runs"]]}
                   for k, g in groups.items()},
        "seed_pair_mean": seed_pair, "group_labels": labels, "group_matrix": group_matrix.tolist(),
        "reference": runs[ref]["name"], "to_reference": {r["name"]: float(total[ref, i]) for i, r in enumerate(runs)},
        "to_reference_per_class": {r["name"]: per_class[:, ref, i].tolist() for i, r in enumerate(runs)},
        "eigenvector_cosines_between_seeds": eigen,
        "method": "cosine of the symmetric input-space tensors from Gram matrices of the factors (bilinear.similarity)",
    }
    if len(keys) == 1 and seed_pair:  # one swept value (d_hidden for E4): the numbers by that value, for the report
        result["seed_pair_by_value"] = {_fmt(groups[k]["params"][keys[0]]): v for k, v in seed_pair.items()}
    write_json(out / "similarity.json", result)
    return result


def _plot(out: Path, runs, labels, groups, total, per_class, ref, keys, eigen) -> None:
    seeded = [k for k in labels if "seed_pair_mean" in groups[k]]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2))
    R = len(runs)
    ax = axes[0]
    im = ax.imshow(total.numpy(), cmap="viridis", vmin=min(0.0, float(total.min())), vmax=1.0)
    names = [f"{r['group']} s{r['seed']}" for r in runs]
    step = max(1, math.ceil(R / 30))  # at most ~30 tick labels
    ax.set_xticks(range(0, R, step), names[::step], rotation=90, fontsize=6)
    ax.set_yticks(range(0, R, step), names[::step], fontsize=6)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("cosine between runs' tensors B (pixel space, from the weights)", fontsize=9)

    ax = axes[1]
    if seeded:
        x = np.arange(len(seeded))
        numeric = len(keys) == 1 and all(isinstance(groups[k]["params"][keys[0]], (int, float)) for k in seeded)
        xs = [groups[k]["params"][keys[0]] for k in seeded] if numeric else x
        mean = [groups[k]["seed_pair_mean"] for k in seeded]
        plots.line_band(ax, xs, mean, [groups[k]["seed_pair_min"] for k in seeded],
                        [groups[k]["seed_pair_max"] for k in seeded], label="whole tensor (band: min-max over seed pairs)",
                        marker="o")
        ax.plot(xs, [groups[k]["per_class_mean_over_classes"] for k in seeded], "s--", label="per class Q_c (mean)")
        for what, style, name in (("top1", "^:", "E4: top eigenvector by |λ|, |cos| (C7)"),
                                  ("top_positive", "v:", "E4: top positive eigenvector, |cos|")):
            pts = [(xv, eigen[k][what]) for xv, k in zip(xs, seeded) if k in eigen]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color="gray", label=name)
        if numeric:
            ax.set_xscale("log" if min(xs) > 0 and max(xs) / min(xs) >= 10 else "linear")
            ax.set_xlabel(_short(keys[0]))
        else:
            ax.set_xticks(x, seeded, rotation=45, ha="right", fontsize=7)
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.02)
        ax.set_ylabel("cosine between seeds (no self-pairs)")
        ax.legend(fontsize=7)
        ax.set_title("seed-to-seed similarity from the weights alone", fontsize=9)
        rows, row_labels = np.array([groups[k]["per_class_mean"] for k in seeded]), seeded
        title = "per-class cosine between seeds (mean over pairs)"
    else:
        to_ref = total[ref].numpy()
        if len(keys) == 2:  # a grid (E3: weight decay x noise): the cosine to the reference over the grid
            rv = sorted({r["params"][keys[0]] for r in runs}, key=str if not _numeric(runs, keys[0]) else float)
            cv = sorted({r["params"][keys[1]] for r in runs}, key=str if not _numeric(runs, keys[1]) else float)
            grid = np.full((len(rv), len(cv)), np.nan)
            for i, r in enumerate(runs):
                grid[rv.index(r["params"][keys[0]]), cv.index(r["params"][keys[1]])] = to_ref[i]
            plots.heatmap(ax, grid, [_fmt(v) for v in rv], [_fmt(v) for v in cv], fmt="{:.2f}", xlabel=_short(keys[1]),
                          ylabel=_short(keys[0]), title=f"cosine to {runs[ref]['group']}")
        else:
            ax.bar(range(R), to_ref)
            ax.set_xticks(range(R), names, rotation=90, fontsize=6)
            ax.set_ylabel(f"cosine to {runs[ref]['group']}")
        rows, row_labels = per_class[:, ref, :].numpy().T, names
        title = f"per-class cosine to {runs[ref]['group']}"
    ax = axes[2]
    n_classes = rows.shape[1]
    plots.heatmap(ax, rows, row_labels, list(range(n_classes)), title=title, fmt="{:.2f}", xlabel="class",
                  vmin=min(0.0, float(np.nanmin(rows))), vmax=1.0)
    fig.suptitle("Exact weight-only similarity <B_a, B_b> / (|B_a| |B_b|) (issue 17); groups by "
                 + (", ".join(_short(k) for k in keys) or "nothing (same config)"), fontsize=10)
    fig.tight_layout()
    plots.save(fig, out / "similarity.png")


def _numeric(runs, key) -> bool:
    return all(isinstance(r["params"][key], (int, float)) and not isinstance(r["params"][key], bool) for r in runs)
