"""E15 / C17: fine-tuning a SwiGLU LM into a bilinear one by annealing swish's beta (train.init_from,
train.beta_anneal_fraction, the beta_annealing cross-run analysis and its report row)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file

from bilinear import checkpoint
from bilinear.errors import CheckpointError, ConfigError
from bilinear.tasks.lm import anneal_steps, annealed_beta
from conftest import run_cli

FINE_TUNE = ("model.mlp=swish", "model.beta=1.0", "train.tokens=20480", "train.eval_every=2", "train.warmup_steps=2")


def _train(run: Path, data_root: Path, *overrides: str, check: bool = True):
    return run_cli("train", "task=stories", "scale=tiny", f"data_root={data_root}", f"hydra.run.dir={run}",
                   "train.progress=false", *overrides, check=check)


def _history(run: Path) -> list[dict[str, float]]:
    with open(run / checkpoint.HISTORY) as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny SwiGLU base run and its two E15 fine-tunes (annealed over the first 30%, fixed beta)."""
    root = tmp_path_factory.mktemp("e15")
    data = root / "data"
    out = {"data": data, "base": root / "base", "annealed": root / "annealed", "fixed": root / "fixed"}
    _train(out["base"], data, "model.mlp=swiglu")
    init = f"train.init_from={out['base']}"
    _train(out["annealed"], data, *FINE_TUNE, init, "train.beta_anneal_fraction=0.3")
    _train(out["fixed"], data, *FINE_TUNE, init)
    return out


def test_beta_schedule_is_linear_to_zero_then_stays():
    betas = [annealed_beta(1.0, 0.3, 100, done) for done in range(101)]
    assert betas[0] == 1.0 and betas[15] == pytest.approx(0.5) and anneal_steps(0.3, 100) == 30
    assert all(b > 0 for b in betas[:30]) and all(b == 0.0 for b in betas[30:])
    assert all(x > y for x, y in zip(betas[:30], betas[1:31]))
    assert annealed_beta(1.0, 0.001, 10, 1) == 0.0  # a fraction under one step still ends at 0


def test_annealed_run_records_beta_and_ends_at_zero(runs):
    m = json.loads((runs["annealed"] / checkpoint.METRICS).read_text())
    assert m["beta"] == 0.0 and m["init_from"] == str(runs["base"]) and m["complete"]
    end = anneal_steps(0.3, m["steps"])
    for row in _history(runs["annealed"]):
        assert row["beta"] == pytest.approx(annealed_beta(1.0, 0.3, m["steps"], int(row["step"])))
        assert (row["beta"] == 0.0) == (row["step"] >= end)
    stored = load_file(str(runs["annealed"] / checkpoint.WEIGHTS))
    assert all(float(v) == 0.0 for k, v in stored.items() if k.endswith(".beta"))
    fixed = json.loads((runs["fixed"] / checkpoint.METRICS).read_text())
    assert fixed["beta"] == 1.0 and all(r["beta"] == 1.0 for r in _history(runs["fixed"]))


def test_init_from_loads_the_base_weights(runs, tmp_path):
    """At lr 0 a swish (beta 1) fine-tune keeps the SwiGLU base's weights and, since Swish_1 = SiLU, its loss."""
    run = tmp_path / "copy"
    _train(run, runs["data"], *FINE_TUNE, f"train.init_from={runs['base']}", "train.lr=0.0", "train.tokens=1024")
    base, copy = load_file(str(runs["base"] / checkpoint.WEIGHTS)), load_file(str(run / checkpoint.WEIGHTS))
    assert set(copy) - set(base) == {f"blocks.{i}.mlp.bilinear.beta" for i in range(2)}
    assert all(torch.equal(base[k], copy[k]) for k in base)
    m, mb = (json.loads((r / checkpoint.METRICS).read_text()) for r in (run, runs["base"]))
    assert m["val_loss"] == pytest.approx(mb["val_loss"], abs=1e-5)
    assert m["init_from_weights_sha256"] == checkpoint.file_sha256(runs["base"] / checkpoint.WEIGHTS)


def test_load_weights_keeps_only_the_named_buffers(tmp_path):
    """``keep`` lets beta come from the model either way (swish -> silu, silu -> swish); nothing else is excused."""
    from bilinear.models.transformer import Transformer
    from bilinear.tasks.lm import beta_keys

    def small(**kw):
        return Transformer(**{"vocab_size": 50, "n_ctx": 16, "d_model": 16, "n_layer": 2, "n_head": 2, "d_hidden": 24, **kw})

    swish, silu = small(mlp="swish", beta=0.0), small(mlp="swiglu")
    checkpoint.save_weights(tmp_path / "swish.safetensors", swish)
    checkpoint.save_weights(tmp_path / "silu.safetensors", silu)
    checkpoint.load_weights(tmp_path / "swish.safetensors", silu, keep=beta_keys(silu))
    assert torch.equal(silu.blocks[0].mlp.bilinear.proj.weight, swish.blocks[0].mlp.bilinear.proj.weight)
    target = small(mlp="swish", beta=0.7)
    checkpoint.load_weights(tmp_path / "silu.safetensors", target, keep=beta_keys(target))
    assert float(target.blocks[1].mlp.bilinear.beta) == pytest.approx(0.7)
    with pytest.raises(CheckpointError, match="missing"):
        checkpoint.load_weights(tmp_path / "silu.safetensors", small(mlp="swish"))  # without keep: strict as ever
    with pytest.raises(CheckpointError, match="shape"):
        checkpoint.load_weights(tmp_path / "silu.safetensors", (m := small(mlp="swish", d_hidden=8)), keep=beta_keys(m))


@pytest.mark.parametrize("overrides, message", [
    (("model.d_hidden=32",), "train.init_from: "),                      # shapes differ from the base run's
    (("model.norm_gain=true",), "train.init_from: "),                   # a parameter the base run does not have
])
def test_init_from_refuses_a_mismatched_run(runs, tmp_path, overrides, message):
    proc = _train(tmp_path / "bad", runs["data"], *FINE_TUNE, f"train.init_from={runs['base']}", *overrides, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "weights do not match the config" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_init_from_refuses_an_unfinished_run(runs, tmp_path):
    proc = _train(tmp_path / "bad", runs["data"], *FINE_TUNE, f"train.init_from={tmp_path / 'nothing'}", check=False)
    assert proc.returncode == 2 and "not a finished run directory" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("overrides, message", [
    (("model.mlp=swiglu", "train.beta_anneal_fraction=0.3"), "needs model.mlp=swish"),
    (("model.mlp=bilinear", "train.beta_anneal_fraction=0.3"), "needs model.mlp=swish"),
    (("model.mlp=swish", "train.beta_anneal_fraction=1.5"), "must be a number in (0, 1]"),
])
def test_bad_anneal_fraction_is_refused(runs, tmp_path, overrides, message):
    proc = _train(tmp_path / "bad", runs["data"], *overrides, check=False)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_resumed_annealing_equals_uninterrupted(runs, tmp_path):
    """beta is a function of the step, and stored with the weights, so a resumed anneal is bit-identical."""
    args = (*FINE_TUNE, f"train.init_from={runs['base']}", "train.beta_anneal_fraction=0.3", "train.checkpoint_every=4")
    run = tmp_path / "resumed"
    _train(run, runs["data"], *args, "train.stop_after_steps=5")
    _train(run, runs["data"], *args, "train.resume=true")
    a, b = load_file(str(runs["annealed"] / checkpoint.WEIGHTS)), load_file(str(run / checkpoint.WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_annealed_model_decomposes_exactly_and_fixed_beta_does_not(runs):
    run_cli("analyze", f"ckpt={runs['annealed']}", "analyses=[lm_exactness]")
    assert json.loads((runs["annealed"] / "analysis" / "metrics.json").read_text())["lm_exactness"]["rel_error"] < 1e-4
    run_cli("analyze", f"ckpt={runs['fixed']}", "analyses=[lm_exactness]")
    assert json.loads((runs["fixed"] / "analysis" / "metrics.json").read_text())["lm_exactness"]["applicable"] is False
    model = instantiate(checkpoint.load_config(runs["fixed"]).model)
    checkpoint.load_weights(runs["fixed"] / checkpoint.WEIGHTS, model)
    with pytest.raises(ConfigError, match="not a quadratic form"):
        model.bilinear_form(0)


def paper_gap() -> float:
    from bilinear.claims_table import paper

    return paper("C17")["gap"]


def test_cross_run_analysis_and_c17_row(runs, tmp_path):
    out = tmp_path / "e15" / "analysis"
    run_cli("analyze", f"runs=[{runs['annealed']},{runs['fixed']}]", "analyses=[beta_annealing]", f"out={out}")
    row = json.loads((out / "metrics.json").read_text())["beta_annealing"]
    va, vb = (json.loads((runs[r] / checkpoint.METRICS).read_text())["val_loss"] for r in ("annealed", "fixed"))
    assert row["claim"] == "C17" and row["gap"] == pytest.approx(va - vb) and row["paper_gap"] == paper_gap()
    assert row["annealed"]["beta_final"] == 0.0 and row["exactness"]["rel_error"] < 1e-4
    assert row["start_val_loss"] == json.loads((runs["base"] / checkpoint.METRICS).read_text())["val_loss"]
    assert (out / "beta_annealing" / "beta_annealing.png").is_file() and (out / "beta_annealing" / "c17.json").is_file()

    from bilinear.claims import Results, beta_annealing_claim

    report_row = beta_annealing_claim(Results(tmp_path))
    assert report_row.claim == "C17" and "not run here" in report_row.notes and report_row.figures
    # the verdict follows the gap against the claims table's band around the paper's gap, whatever its sign
    from bilinear.claims_table import paper, thresholds

    target, factor = paper("C17")["gap"], thresholds("C17")["factor"]
    assert report_row.verdict.startswith("NOT reproduced") == (not target / factor <= row["gap"] <= target * factor)

    proc = run_cli("analyze", f"runs=[{runs['annealed']},{runs['base']}]", "analyses=[beta_annealing]",
                   f"out={tmp_path / 'bad'}", check=False)
    assert proc.returncode == 2 and "one with train.beta_anneal_fraction set" in proc.stderr
