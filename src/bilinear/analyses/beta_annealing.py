"""E15 / claim C17: fine-tuning a gated (swish) LM into a bilinear one by annealing beta (PAPER.md Appendix J).

``Swish_beta(a) = a sigmoid(beta a)``; at beta = 0 it is ``a / 2`` and the MLP is a quadratic form. The
paper annealed TinyLlama-1.1B's beta to 0 early in a long fine-tune and found the loss ends a little above
continued training at fixed beta (its numbers: ``bilinear.claims_table``, C17). We run the same mechanism on a
small LM; ``bilinear.claims`` judges the gap.

Called across runs: ``python -m analyze runs=[<annealed>,<fixed-beta baseline>] analyses=[beta_annealing]``.
The annealed run is the one with ``train.beta_anneal_fraction`` set; the baseline is the swish run without.
Reports both final held-out losses and the gap (annealed - baseline) beside the paper's, checks that the
annealed model decomposes exactly (lm_exactness on every layer, held-out tokens; the analysis fails above
``exactness_tol``), and draws held-out loss against step with beta on a twin axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bilinear import checkpoint, plots
from bilinear.analyses import register, write_json
from bilinear.analyses.lm_exactness import lm_exactness
from bilinear.claims_table import paper
from bilinear.errors import ConfigError, ExactnessError
from bilinear.tasks.lm import anneal_steps



def split_runs(runs: list) -> tuple[Any, Any]:
    """(annealed, baseline) RunContexts: exactly one run with ``train.beta_anneal_fraction`` set and one swish
    run without it, fine-tuned from the same weights on the same token budget (else the gap is not C17's)."""
    annealed = [c for c in runs if c.run_cfg.train.get("beta_anneal_fraction") is not None]
    baseline = [c for c in runs if c.run_cfg.train.get("beta_anneal_fraction") is None and c.run_cfg.model.mlp == "swish"]
    if len(annealed) != 1 or len(baseline) != 1 or len(runs) != 2:
        raise ConfigError(f"config: beta_annealing needs exactly two runs, one with train.beta_anneal_fraction set and one "
                          f"swish run at fixed beta; got {len(annealed)} annealed and {len(baseline)} fixed-beta of {len(runs)}")
    a, b = annealed[0], baseline[0]
    for key in ("init_from_weights_sha256", "tokens"):
        if a.metrics.get(key) != b.metrics.get(key):
            raise ConfigError(f"config: beta_annealing compares runs that differ only in the beta schedule; {a.run_dir} and "
                              f"{b.run_dir} differ in {key}")
    return a, b


def run_summary(ctx) -> dict[str, Any]:
    """What C17 needs from one finished swish run."""
    m, cfg = ctx.metrics, ctx.run_cfg
    return {"run": str(ctx.run_dir), "task": cfg.task.name, "val_loss": m["val_loss"], "train_loss": m.get("train_loss"),
            "beta_start": float(cfg.model.beta), "beta_final": m.get("beta"),
            "beta_anneal_fraction": cfg.train.get("beta_anneal_fraction"), "init_from": m.get("init_from"),
            "tokens": m.get("tokens"), "steps": m.get("steps"), "lr": float(cfg.train.lr),
            "train_seconds": m.get("train_seconds"), "rule_acc_min": m.get("rule_acc_min")}


def init_val_loss(ctx) -> float | None:
    """The held-out loss of the model both runs started from, where its run directory says it measured it on
    the same token cache and the same number of held-out tokens (else None: not comparable)."""
    init = ctx.metrics.get("init_from")
    path = Path(init) / checkpoint.METRICS if init else None
    if path is None or not path.is_file():
        return None
    m = checkpoint.read_json(path)
    same_eval = checkpoint.load_config(init).train.get("final_eval_tokens") == ctx.run_cfg.train.get("final_eval_tokens")
    # the cache folder's name is its content key; the data root before it may be written relative or absolute
    same_cache = Path(str(m.get("token_cache"))).name == Path(str(ctx.metrics.get("token_cache"))).name
    return m.get("val_loss") if same_eval and same_cache else None


def annealed_exactness(ctx, out: Path) -> dict[str, Any]:
    """C1 on the annealed model: lm_exactness on every layer (held-out tokens; out/lm_exactness.json). It raises
    ExactnessError above ``exactness_tol``; a model whose beta never reached 0 is no quadratic form at all."""
    result = lm_exactness(ctx, out)
    if not result["applicable"]:
        raise ExactnessError(f"{ctx.run_dir}: the annealed run ends with beta={ctx.metrics.get('beta')}, not 0, so its "
                             "MLPs are not quadratic forms")
    return {"rel_error": result["rel_error"], "max_abs_error": result["max_abs_error"],
            "per_layer_rel_error": {l: r["rel_error"] for l, r in result["per_layer"].items()},
            "n_sequences": result["n_sequences"], "n_directions": result["n_directions"]}


def plot(annealed, baseline, start_loss: float | None, path: Path) -> None:
    """Held-out loss against fine-tune step for both runs (left axis) and their beta (right axis)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    beta_ax = ax.twinx()
    for ctx, label, color in ((annealed, "annealed", "C0"), (baseline, "fixed beta", "C1")):
        hist = [h for h in checkpoint.read_history(ctx.run_dir) if "val_loss" in h]
        steps = [h["step"] for h in hist]
        ax.plot(steps, [h["val_loss"] for h in hist], "-", color=color, label=f"{label}: held-out loss")
        ax.plot([ctx.metrics["steps"]], [ctx.metrics["val_loss"]], "o", color=color, ms=4)  # the final (larger) eval
        beta0 = float(ctx.run_cfg.model.beta)  # beta before the first step; history rows hold it after each eval
        beta_ax.plot([0] + steps, [beta0] + [h.get("beta", beta0) for h in hist], ":", color=color, label=f"{label}: beta")
    frac = annealed.run_cfg.train.beta_anneal_fraction
    ax.axvline(anneal_steps(frac, int(annealed.metrics["steps"])), color="gray", lw=0.8, label="beta reaches 0")
    if start_loss is not None:
        ax.axhline(start_loss, color="gray", ls="--", lw=0.8, label="start model (final eval)")
    ax.set(xlabel="fine-tune step", ylabel="held-out loss (dots: final eval)")
    beta_ax.set(ylabel="beta", ylim=(-0.05, 1.05 * max(1.0, float(annealed.run_cfg.model.beta))))
    lines = ax.get_legend_handles_labels()
    more = beta_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)
    fig.suptitle(f"E15: swish beta annealed to 0 over the first {frac:.0%} of the steps vs fixed beta", fontsize=10)
    plots.save(fig, path)


def c17_measures(a: dict, b: dict, exact: dict, start_loss: float | None) -> dict[str, Any]:
    """What C17's verdict reads: the loss gap (annealed - fixed beta) beside the paper's, and the exactness of the
    bilinear result. ``paper_gap`` is copied from the claims table so the metrics say what they were compared with."""
    gap = a["val_loss"] - b["val_loss"]
    return {"claim": "C17", "paper_gap": paper("C17")["gap"], "gap": gap, "rel_gap": gap / b["val_loss"],
            "start_val_loss": start_loss, "annealed": a, "baseline": b, "exactness": exact}


@register("beta_annealing", kinds=("lm",), scope="cross", default=False)  # only on an E15 pair of runs
def beta_annealing(runs, out: Path, cfg) -> dict:
    annealed, baseline = split_runs(runs)
    exact = annealed_exactness(annealed, out)
    start = init_val_loss(annealed)
    row = c17_measures(run_summary(annealed), run_summary(baseline), exact, start)
    plot(annealed, baseline, start, out / "beta_annealing.png")
    write_json(out / "c17.json", row)
    return row
