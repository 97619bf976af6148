"""The transformer, LM training, resume and LM exactness (issue 5; PAPER.md §3, C1, E14)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bilinear.analyses.lm_exactness import layer_exactness
from bilinear.errors import ConfigError
from bilinear.models.transformer import Transformer, site_name
from conftest import run_cli


def small(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(**{"vocab_size": 50, "n_ctx": 16, "d_model": 16, "n_layer": 2, "n_head": 2, "d_hidden": 24, **kw})


def test_hooks_read_patch_and_stop():
    model = small().eval()
    tokens = torch.randint(0, 50, (3, 16))
    sites = [site_name(l, s) for l in range(2) for s in ("resid_pre", "mlp_in", "mlp_out", "resid_post")]
    logits, cache = model.run_with_cache(tokens, sites)
    assert logits.shape == (3, 16, 50) and set(cache) == set(sites)
    assert torch.allclose(cache["blocks.1.resid_pre"], cache["blocks.0.resid_post"])
    assert torch.allclose(cache["blocks.0.mlp_in"].pow(2).mean(-1), torch.ones(3, 16), atol=1e-2)  # RMS-normed (eps aside)
    same = model(tokens, patch={"blocks.0.mlp_out": lambda x: x})
    assert torch.equal(same, logits)
    zeroed = model(tokens, patch={"blocks.0.mlp_out": torch.zeros_like})
    assert not torch.allclose(zeroed, logits)
    assert model(tokens, stop_at_layer=0) is None
    assert model(tokens[:, :5]).shape == (3, 5, 50)
    # causal: the logits at position t do not depend on later tokens
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 50
    assert torch.allclose(model(changed)[:, :10], logits[:, :10], atol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"norm_gain": True}, {"mlp": "swish", "beta": 0.0}])
def test_lm_exactness_on_random_weights(kw):
    """u . mlp_out = sum lambda (v . mlp_in)^2, with a norm gain folded in and for swish at beta = 0."""
    model = small(**kw).eval()
    if kw.get("norm_gain"):
        with torch.no_grad():
            for b in model.blocks:
                b.mlp_gain.uniform_(0.5, 2.0)
    U = torch.randn(8, 16, dtype=torch.float64)
    for layer in range(2):
        err = layer_exactness(model, layer, torch.randint(0, 50, (4, 16)), U)
        assert err["rel_error"] < 1e-5


def test_gated_models_refuse_decomposition():
    with pytest.raises(ConfigError, match="not a quadratic form"):
        small(mlp="swiglu").bilinear_form(0)
    with pytest.raises(ConfigError):
        small(mlp="gelu")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lmdata")


def _train(run: Path, data_root: Path, *overrides: str, check: bool = True):
    return run_cli("train", "task=stories", "scale=tiny", f"data_root={data_root}", f"hydra.run.dir={run}",
                   "train.progress=false", *overrides, check=check)


def test_tiny_stories_training_lowers_loss_and_analyses_run(tmp_path, data_root):
    run = tmp_path / "run"
    _train(run, data_root)
    metrics = json.loads((run / "metrics.json").read_text())
    history = (run / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    val = [float(r.split(",")[header.index("val_loss")]) for r in history[1:]]
    init = math.log(metrics["vocab_size"])  # the loss of a uniform prediction, where training starts
    assert metrics["complete"] and metrics["val_loss"] < val[0] < init and metrics["val_loss"] < 0.75 * init
    assert set(metrics["rule_acc"]) == {"pos", "pos_neg", "neg", "neg_neg"} and metrics["tokens_per_s"] > 0
    assert "tokens_per_s" in header and (run / "tokenizer.json").is_file()
    run_cli("analyze", f"ckpt={run}", "analyses=[lm_exactness,samples]")
    result = json.loads((run / "analysis" / "metrics.json").read_text())
    assert result["lm_exactness"]["rel_error"] <= 1e-4
    assert result["samples"]["n_samples"] >= 4 and (run / "analysis" / "samples" / "samples.md").is_file()


def test_resume_equals_uninterrupted(tmp_path, data_root):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _train(full, data_root, "train.checkpoint_every=10")
    _train(resumed, data_root, "train.checkpoint_every=10", "train.stop_after_steps=15")
    assert not json.loads((resumed / "metrics.json").read_text() if (resumed / "metrics.json").exists() else "{}").get("complete")
    assert json.loads((resumed / "manifest.json").read_text())["checkpoint"]["step"] == 15  # the stop's checkpoint
    _train(resumed, data_root, "train.checkpoint_every=10", "train.resume=true")
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gated_variants_and_c16(tmp_path, data_root):
    runs = []
    for mlp in ("bilinear", "reglu", "swiglu"):
        runs.append(tmp_path / mlp)
        _train(runs[-1], data_root, f"model.mlp={mlp}", "train.tokens=8192")
    _train(tmp_path / "timed", data_root, "model.mlp=swiglu", "train.time_budget_s=1.0")
    assert json.loads((tmp_path / "timed" / "budget.json").read_text())["total_steps"] >= 1
    out = tmp_path / "cmp"
    run_cli("analyze", f"runs=[{','.join(map(str, runs + [tmp_path / 'timed']))}]", "analyses=[gated_comparison]",
            f"out={out}")
    row = json.loads((out / "metrics.json").read_text())["gated_comparison"]
    assert row["claim"] == "C16" and set(row["details"]["equal_tokens"]["val_loss"]) == {"bilinear", "reglu", "swiglu"}
    assert (out / "gated_comparison" / "gated_comparison.png").is_file()
    # a gated run has no exact decomposition: the analysis says so instead of failing
    run_cli("analyze", f"ckpt={runs[1]}", "analyses=[lm_exactness]")
    assert json.loads((runs[1] / "analysis" / "metrics.json").read_text())["lm_exactness"]["applicable"] is False


def test_bad_overrides_are_one_line_errors(tmp_path, data_root):
    proc = _train(tmp_path / "bad", data_root, "model.mlp=gelu", check=False)
    assert proc.returncode == 2 and "model.mlp must be one of" in proc.stderr
    proc = _train(tmp_path / "bad2", data_root, "model.vocab_size=64", check=False)
    assert proc.returncode == 2 and "smaller than the tokenizer" in proc.stderr
