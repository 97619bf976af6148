"""Issue 3's analyses of one run (E1-E4, E8, E9) from the CLI on a tiny run, and their exactness checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli

RUN_ANALYSES = "analyses=[spectrum,eigenvectors,overfitting,truncation,explain,hosvd]"


@pytest.fixture(scope="module")
def analysed_run(tiny_mnist_run, tmp_path_factory) -> Path:
    """A private copy of the tiny run with every single-run analysis of issue 3 run once through the CLI."""
    run = tmp_path_factory.mktemp("image_analyses") / "run"
    shutil.copytree(tiny_mnist_run, run, ignore=shutil.ignore_patterns("analysis"))
    run_cli("analyze", f"ckpt={run}", RUN_ANALYSES, "class_id=3", "spectrum.extra_classes=[2]", "explain.index=7")
    return run


def metrics(run: Path) -> dict:
    return json.loads((run / "analysis" / "metrics.json").read_text())


def test_every_run_analysis_writes_figures_and_metrics(analysed_run):
    out = analysed_run / "analysis"
    for f in ("spectrum/spectrum_class3.png", "spectrum/spectrum_class2.png",
              "eigenvectors/top_eigenvectors.png", "overfitting/overfitting.png", "overfitting/overfitting.json",
              "truncation/truncation.png", "truncation/truncation.json", "explain/explain_test7.png",
              "explain/explain_test7.json", "hosvd/hosvd.png", "hosvd/hosvd.json", "decomposition.safetensors"):
        assert (out / f).is_file(), f
    m = metrics(analysed_run)
    assert m["exactness_rel_error"] <= 1e-4
    sp = m["spectrum"]
    assert sp["shown_classes"] == ["3", "2"]
    for shown in sp["shown"].values():  # up to 20 per sign, each list only of its own sign (d_hidden 32 has 32 in all)
        pos, neg = shown["largest_positive"], shown["largest_negative"]
        assert 0 < len(pos) <= 20 and 0 < len(neg) <= 20 and len(pos) + len(neg) <= 32
        assert all(v > 0 for v in pos) and all(v < 0 for v in neg)
        assert pos == sorted(pos, reverse=True) and neg == sorted(neg)
        assert shown["largest_positive"] == sorted(shown["largest_positive"], reverse=True)
    of = m["overfitting"]
    assert of["verdict"] and isinstance(of["overfits"], bool)
    assert set(of["effective_pixels"]) == {str(c) for c in range(10)}
    assert all(0 <= v <= 1 for v in of["rare_mass"].values())
    assert of["train_test_gap"] == pytest.approx(of["train_acc"] - of["test_acc"])


def test_truncation_at_full_k_equals_the_models_accuracy(analysed_run):
    t = metrics(analysed_run)["truncation"]
    train_metrics = json.loads((analysed_run / "metrics.json").read_text())
    assert t["acc_full"] == t["acc_model"] == train_metrics["test_acc"]
    assert t["n_disagree_full_vs_model"] == 0 and t["full_equals_model"]
    assert t["k"] == list(range(31))[: len(t["acc"])] and len(t["acc"]) == 31  # k = 0..30 (d_hidden 32)
    assert t["drop"][5] == pytest.approx(t["final_test_acc"] - t["acc"][5])


def test_truncated_curve_matches_reconstruct_directly(analysed_run):
    """The cumulative-sum curve equals decompose.reconstruct(eig, z, k) for a few k."""
    from omegaconf import OmegaConf

    from bilinear.analyses.context import RunContext
    from bilinear.decompose import reconstruct

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "analyze.yaml")
    ctx = RunContext(analysed_run, cfg)
    z = ctx.form.to_z(ctx.image_data.test_x)
    t = metrics(analysed_run)["truncation"]
    for k in (1, 3, 10):
        acc = (reconstruct(ctx.class_eigen, z, k).argmax(-1) == ctx.image_data.test_y).double().mean().item()
        assert acc == pytest.approx(t["acc"][k])


def test_explain_activations_sum_to_the_logits(analysed_run, tmp_path):
    e = metrics(analysed_run)["explain"]
    assert e["source"] == "test image 7" and len(e["classes"]) == 3
    assert e["activation_sum_error"] < 1e-4
    logits = e["logits"]
    assert [c["class"] for c in e["classes"]] == sorted(logits, key=logits.get, reverse=True)[:3]
    # an image file instead of an index (the same test image saved as .npy gives the same logits)
    from bilinear.dataio.images import load_image_dataset
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(analysed_run / "config.yaml")
    data = load_image_dataset("mnist", cfg.data.root, verify=False)
    img = tmp_path / "digit.npy"
    np.save(img, (data.test_x[7].numpy().reshape(28, 28) * 255).round())
    cache = analysed_run / "analysis" / "decomposition.safetensors"
    before = cache.stat().st_mtime_ns
    run_cli("analyze", f"ckpt={analysed_run}", "analyses=[explain]", f"explain.image={img}")
    assert cache.stat().st_mtime_ns == before, "the cached decomposition must be reused, not recomputed"
    assert set(load_file(str(cache))) >= {"values", "vectors", "input_vectors"}
    e2 = json.loads((analysed_run / "analysis" / "explain" / "explain_digit.json").read_text())
    for c in logits:
        assert e2["logits"][c] == pytest.approx(logits[c], abs=1e-4)


def test_hosvd_reconstructs_the_flattened_tensor(analysed_run):
    from omegaconf import OmegaConf

    from bilinear.analyses.context import RunContext
    from bilinear.decompose import hosvd, output_tensor

    h = metrics(analysed_run)["hosvd"]
    assert h["reconstruction_rel_error"] < 1e-10
    assert h["singular_values"] == sorted(h["singular_values"], reverse=True)
    assert sum(h["energy_fraction"]) == pytest.approx(1.0)
    ctx = RunContext(analysed_run, OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "analyze.yaml"))
    B = output_tensor(ctx.form)
    f = hosvd(B)
    flat = (f.U * f.S) @ f.Q.reshape(len(f.S), -1)  # (classes, d*d) from its factors
    torch.testing.assert_close(flat, B.reshape(B.shape[0], -1))


def test_bad_explain_index_is_a_clean_error(analysed_run, tmp_path):
    from omegaconf import OmegaConf

    from bilinear.analyses.context import RunContext
    from bilinear.analyses.explain import explain
    from bilinear.errors import ConfigError

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "analyze.yaml")
    cfg.explain.index = 100000
    with pytest.raises(ConfigError, match="explain.index"):
        explain(RunContext(analysed_run, cfg), tmp_path)


def strict_json(path: Path) -> dict:
    """json.loads that refuses the bare NaN / Infinity tokens Python would otherwise accept."""
    def refuse(token):
        raise ValueError(f"{path} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_nan_weights_are_a_one_line_error_recorded_for_c1(tiny_mnist_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_mnist_run, run, ignore=shutil.ignore_patterns("analysis"))
    w = load_file(str(run / "model.safetensors"))
    w["head.weight"][0, 0] = float("nan")  # NaN > tol is False: the exactness gate alone would let this through
    from safetensors.torch import save_file

    save_file(w, str(run / "model.safetensors"))
    (run / "manifest.json").unlink(missing_ok=True)  # edited by hand: no longer the files training wrote
    proc = run_cli("analyze", f"ckpt={run}", "analyses=[spectrum]", check=False)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("error:") and len(err.splitlines()) == 1 and "non-finite" in err, err
    assert "Traceback" not in proc.stdout + proc.stderr
    m = strict_json(run / "analysis" / "metrics.json")
    check = m["exactness_checks"]["the model's weights"]
    assert check["passed"] is False and "non-finite" in check["error"] and m["spectrum"]["failed"] is True


def test_metrics_merge_is_locked_and_writes_valid_json(tmp_path, monkeypatch):
    """Two analyses ending together both land in metrics.json; NaN is written as null, not as a bare NaN token."""
    import threading
    import time

    from bilinear import checkpoint
    from bilinear.analyses import _merge_metrics

    read = checkpoint.read_json

    def slow_read(path):  # widen the read-modify-write window so an unlocked merge would lose updates
        out = read(path)
        time.sleep(0.01)
        return out

    monkeypatch.setattr(checkpoint, "read_json", slow_read)
    path = tmp_path / "analysis" / "metrics.json"
    threads = [threading.Thread(target=_merge_metrics, args=(path, {f"a{i}": float("nan") if i == 0 else i})) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m = strict_json(path)
    assert set(m) == {f"a{i}" for i in range(12)} and m["a0"] is None


def test_analyze_prints_one_line_per_analysis(tiny_mnist_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_mnist_run, run, ignore=shutil.ignore_patterns("analysis"))
    proc = run_cli("analyze", f"ckpt={run}", "analyses=[spectrum,eigenvectors]")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[analyze]")]
    assert [ln.split()[1] for ln in lines] == ["spectrum", "eigenvectors"]
    assert all(" done in " in ln and ln.split(" done in ")[1].split()[0].replace(".", "").isdigit() for ln in lines)
    assert proc.stdout.strip().splitlines()[-1] == str(run / "analysis")
