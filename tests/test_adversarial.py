"""E6 adversarial masks: built from the weights alone, keys are a pseudoinverse, evaluation is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bilinear.analyses.adversarial import build_keys, mean_ci, normalize, t_quantile_975
from conftest import run_cli


def test_each_key_activates_its_own_eigenvector_only():
    """Stacked hidden eigenvectors (10 classes x 3) in 64 dims: key_i . v_j = delta_ij, whatever the sign fix."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(30, 64, generator=g, dtype=torch.float64)
    embed = torch.randn(64, 784, generator=g, dtype=torch.float64)
    train_x = torch.rand(200, 784, generator=g, dtype=torch.float64)
    train_y = torch.arange(200) % 10
    masks, gram = build_keys(hidden, embed, 10, 3, train_x, train_y)
    assert masks.shape == (30, 784)
    assert torch.allclose(gram.abs(), torch.eye(30, dtype=torch.float64), atol=1e-9)
    # the sign makes each mask push its readout away from zero on the other classes' images
    readouts = hidden @ embed
    for i in range(30):
        c = i // 3
        mean_act = (train_x[train_y != c] @ readouts[i]).mean()
        assert torch.sign(masks[i] @ readouts[i]) == torch.sign(mean_act)


def test_normalizations():
    m = torch.randn(784, dtype=torch.float64)
    assert normalize(m, "dense").std().item() == pytest.approx(1.0)
    e = normalize(m * (torch.arange(784) < 100), "edge")
    assert e[e > 0].std().item() == pytest.approx(1.0)


def test_t_interval():
    assert t_quantile_975(29) == pytest.approx(2.0452, abs=2e-3)
    assert t_quantile_975(9) == pytest.approx(2.2622, abs=5e-3)
    v = torch.tensor([0.0, 2.0] * 15)[:, None]  # n = 30, sample std 1.017
    mean, half = mean_ci(v)
    assert mean.item() == 1.0 and half.item() == pytest.approx(2.0452 * v.std().item() / 30**0.5, rel=1e-3)


def test_adversarial_analysis_on_a_tiny_run(tiny_mnist_run: Path):
    run_cli("analyze", f"ckpt={tiny_mnist_run}", "analyses=[adversarial]", "adversarial.n_stack=3", "adversarial.top=2",
            "adversarial.strengths=[0.1,0.5,1.0]", "adversarial.variants=[dense]")
    m = json.loads((tiny_mnist_run / "analysis/metrics.json").read_text())["adversarial"]
    assert m["eval_split"] == "test"
    assert m["pinv_max_abs_offdiag"] < 1e-6 and m["pinv_max_abs_diag_error"] < 1e-6
    assert m["quadratic_identity_rel_error"] < 1e-4  # the a + b s + c s^2 evaluation matches a direct forward pass
    d = m["dense"]
    assert d["n_masks"] == 20 and len(d["mask_acc_mean"]) == 4 == len(d["baseline_acc_ci95"])
    assert d["mask_acc_mean"][0] == d["baseline_acc_mean"][0] == pytest.approx(m["clean_test_acc"])
    assert (tiny_mnist_run / "analysis/adversarial/adversarial_dense.png").is_file()


def test_mask_construction_needs_no_model(tiny_mnist_run: Path, monkeypatch):
    """Building the keys touches weights and training images only: a model whose forward raises still works
    until evaluation starts."""
    from omegaconf import OmegaConf

    from bilinear.analyses import adversarial as adv
    from bilinear.analyses.context import RunContext

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/analyze.yaml")
    ctx = RunContext(tiny_mnist_run, cfg)
    eig, data = ctx.class_eigen, ctx.image_data
    model = ctx.model
    monkeypatch.setattr(type(model), "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("forward pass")))
    idx, _ = eig.positive(3)
    hidden = torch.stack([eig.vectors[c, idx[c]] for c in range(10)]).reshape(30, -1)
    masks, gram = adv.build_keys(hidden, ctx.form.embed, 10, 3, data.train_x, data.train_y)
    assert masks.shape == (30, 784) and torch.allclose(gram.abs(), torch.eye(30, dtype=gram.dtype), atol=1e-8)
