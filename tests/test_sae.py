"""TopK SAEs and the Section 5 analyses (issue 6; PAPER.md §3 "SAEs", E11, E12, E13, C15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from bilinear.analyses.lowrank import lowrank_correlations
from bilinear.decompose import BilinearForm, interaction_matrices
from bilinear.features import BasisMap, cross_interactions, feature_eigen, sae_basis_eigen, sae_basis_matrices
from bilinear.models.sae import TopKSAE
from bilinear.models.transformer import Transformer
from bilinear.reproduce import experiment_deps, resolve_refs, topological
from bilinear.errors import ConfigError
from omegaconf import OmegaConf
from conftest import run_cli


# --- the SAE itself ----------------------------------------------------------------------------------
def test_topk_sae_shapes_sparsity_and_unit_decoder():
    torch.manual_seed(0)
    sae = TopKSAE(d_model=12, expansion=4, k=5)
    assert sae.W_enc.shape == (48, 12) and sae.W_dec.shape == (12, 48) and sae.b_dec.shape == (12,)
    assert torch.allclose(sae.W_dec.norm(dim=0), torch.ones(48), atol=1e-6)
    assert torch.equal(sae.W_enc, sae.W_dec.T)  # tied at initialisation
    x = torch.randn(7, 3, 12)
    z = sae.encode(x)
    assert z.shape == (7, 3, 48) and sae(x).shape == x.shape
    assert ((z > 0).sum(-1) <= 5).all() and (z >= 0).all()
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalize_decoder()
    assert torch.allclose(sae.W_dec.norm(dim=0), torch.ones(48), atol=1e-6)
    with pytest.raises(ConfigError):
        TopKSAE(d_model=4, expansion=1, k=5)


def test_topk_sae_loss_falls_on_sparse_data():
    """Data made of 2-sparse combinations of 16 directions: the SAE's reconstruction error must fall a lot."""
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(16, 8, generator=g)
    codes = torch.zeros(2048, 16)
    idx = torch.randint(0, 16, (2048, 2), generator=g)
    codes.scatter_(1, idx, torch.rand(2048, 2, generator=g) + 0.5)
    x = codes @ atoms
    torch.manual_seed(0)
    sae = TopKSAE(d_model=8, expansion=4, k=4)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    losses = []
    for step in range(300):
        batch = x[(step * 256) % 2048 :][:256]
        loss = torch.nn.functional.mse_loss(sae(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sae.normalize_decoder()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.2 * sum(losses[:5]) / 5


# --- the maths of E11 ----------------------------------------------------------------------------------
def planted_and_layer() -> BilinearForm:
    """Inputs (negation, positive, negative, constant); output 0 = negation AND positive ("not good"),
    output 1 = negation AND negative ("not bad")."""
    W = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]], dtype=torch.float64)  # both read negation on the left
    V = torch.tensor([[0, 1.0, 0, 0], [0, 0, 1.0, 0]], dtype=torch.float64)  # and one sentiment on the right
    P = torch.eye(2, dtype=torch.float64)
    return BilinearForm(W, V, P)


@pytest.mark.parametrize("basis", ["identity", "orthonormal"])
def test_planted_interaction_matrix_in_known_dictionaries(basis):
    form = planted_and_layer()
    d = form.d
    D = torch.eye(d, dtype=torch.float64)
    if basis == "orthonormal":
        D = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0]
    E_out = torch.eye(2, dtype=torch.float64)  # output SAE encoder rows = the two outputs
    Qt = sae_basis_matrices(interaction_matrices(form, E_out), D)
    # known answer in the feature basis: Q_0 = sym(e_neg e_pos^T) -> cross-interaction 1 between them, no self
    known = torch.zeros(2, d, d, dtype=torch.float64)
    known[0, 0, 1] = known[0, 1, 0] = 0.5
    known[1, 0, 2] = known[1, 2, 0] = 0.5
    expected = D.T @ known @ D
    assert torch.allclose(Qt, expected, atol=1e-12)
    if basis == "identity":
        selfs, cross = cross_interactions(Qt)
        assert torch.equal(selfs, torch.zeros(2, d, dtype=torch.float64))
        assert cross[0].tolist()[0] == 1.0 and cross[1].tolist()[1] == 1.0  # pairs (0,1) then (0,2)
        assert cross.abs().sum() == 2.0
        # an AND: one positive and one negative eigenvalue, +-1/2 with eigenvectors (e_n +- e_s)/sqrt 2
        vals = torch.linalg.eigvalsh(Qt[0])
        assert torch.allclose(vals[[0, -1]], torch.tensor([-0.5, 0.5], dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(d=st.integers(2, 6), extra=st.integers(0, 8), seed=st.integers(0, 10_000))
def test_sae_basis_eigen_equals_direct_eigendecomposition(d, extra, seed):
    """The d x d route gives the non-zero eigenpairs of D^T Q D (n x n, n >= d) exactly."""
    g = torch.Generator().manual_seed(seed)
    n = d + extra
    D = torch.randn(d, n, generator=g, dtype=torch.float64)
    D = D / D.norm(dim=0, keepdim=True)
    A = torch.randn(3, d, d, generator=g, dtype=torch.float64)
    Q = A + A.transpose(1, 2)
    eig = sae_basis_eigen(Q, BasisMap.of(D))
    Qt = sae_basis_matrices(Q, D)
    direct = torch.linalg.eigvalsh(Qt)  # n eigenvalues, of which at most d are non-zero
    got = eig.values.sort(-1).values
    ref = torch.gather(direct, 1, direct.abs().argsort(dim=-1, descending=True)[:, :d]).sort(-1).values
    assert torch.allclose(got, ref, atol=1e-8 * (1 + float(direct.abs().max())))
    # eigenvectors: unit rows w with Q~ w = lambda w
    assert torch.allclose(eig.vectors.norm(dim=-1), torch.ones(3, d, dtype=torch.float64), atol=1e-8)
    lhs = torch.einsum("mij,mkj->mki", Qt, eig.vectors)
    assert torch.allclose(lhs, eig.values.unsqueeze(-1) * eig.vectors, atol=1e-7 * (1 + float(direct.abs().max())))


def test_feature_eigen_in_chunks_matches_one_batch():
    g = torch.Generator().manual_seed(0)
    form = BilinearForm(torch.randn(10, 6, generator=g, dtype=torch.float64), torch.randn(10, 6, generator=g, dtype=torch.float64),
                        torch.randn(5, 10, generator=g, dtype=torch.float64))
    rows = torch.randn(9, 5, generator=g, dtype=torch.float64)
    a, b = feature_eigen(form, rows, chunk=2), feature_eigen(form, rows, chunk=64)
    assert torch.allclose(a.values, b.values) and torch.allclose(a.vectors, b.vectors)
    assert feature_eigen(form, rows, keep=3).vectors.shape == (9, 3, 6)


def test_lowrank_at_full_rank_reproduces_u_dot_mlp():
    """E12 at k = d_model: sum of all lambda_i (v_i . x)^2 is e_a . MLP(x); the correlation where active is 1."""
    torch.manual_seed(0)
    model = Transformer(vocab_size=40, n_ctx=12, d_model=8, n_layer=2, n_head=2, d_hidden=16).eval()
    sae = TopKSAE(d_model=8, expansion=2, k=6).eval()
    tokens = torch.randint(0, 40, (20, 12))
    res = lowrank_correlations(model, sae, tokens, layer=1, ks=[1, 2, 8], min_active=3)
    assert res["exactness"]["rel_error"] < 1e-6  # float32 activations, float64 maths
    full = res["corr"][:, -1]
    kept = ~torch.isnan(full)
    assert kept.any() and torch.allclose(full[kept], torch.ones(int(kept.sum()), dtype=torch.float64), atol=1e-6)


# --- reproduce's references between experiments -----------------------------------------------------
def test_run_references_resolve_and_order_experiments(tmp_path):
    exp = OmegaConf.create({"runs": {"a": ["task=sae", "lm=@run:stories/bilinear"]},
                            "lm_analyses": {"x": {"ckpt": "@run:stories/bilinear", "analyses": ["lowrank"]}}})
    assert experiment_deps(exp) == {"stories"}
    assert resolve_refs("lm=@run:stories/bilinear", tmp_path) == f"lm={tmp_path / 'stories' / 'bilinear'}"
    assert topological(["sae", "e15", "stories"], {"sae": {"stories"}, "e15": {"stories"}}) == ["stories", "sae", "e15"]
    with pytest.raises(ConfigError, match="cycle"):
        topological(["a", "b"], {"a": {"b"}, "b": {"a"}})


# --- the commands end to end on a tiny stories LM ---------------------------------------------------
def _sae(lm: Path, root: Path, out: Path, *overrides: str, check: bool = True):
    return run_cli("train", "task=sae", "scale=tiny", f"lm={lm}", f"data_root={root}", f"hydra.run.dir={out}",
                   "train.progress=false", *overrides, check=check)


@pytest.fixture(scope="module")
def sae_runs(lm_run, tmp_path_factory) -> dict[str, Path]:
    lm, root = lm_run
    base = tmp_path_factory.mktemp("saes")
    runs = {site: base / site for site in ("mlp_in", "mlp_out")}
    for site, path in runs.items():
        _sae(lm, root, path, "sae.layer=1", f"sae.site={site}")
    return runs


def test_sae_training_writes_metrics_and_references_its_lm(lm_run, sae_runs):
    lm, _ = lm_run
    for site, run in sae_runs.items():
        m = json.loads((run / "metrics.json").read_text())
        assert m["complete"] and m["site"] == site and m["layer"] == 1
        assert 0 <= m["nmse"] < 1 and m["loss_added"] > -0.5 and 0 <= m["dead_fraction"] <= 1
        assert m["loss_zero_ablated"] > m["loss_clean"] and m["loss_recovered"] > 0.0
        ref = json.loads((run / "lm.json").read_text())
        assert Path(ref["path"]) == lm.resolve() and len(ref["weights_sha256"]) == 64
        hist = (run / "history.csv").read_text().splitlines()
        col = hist[0].split(",").index("val_nmse")
        nmse = [float(r.split(",")[col]) for r in hist[1:]]
        assert nmse[-1] < nmse[0]  # the held-out reconstruction improves
        assert set(load_file(str(run / "model.safetensors"))) == {"W_enc", "W_dec", "b_dec"}


def test_sae_resume_equals_uninterrupted(lm_run, tmp_path):
    lm, root = lm_run
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _sae(lm, root, full, "train.checkpoint_every=16")
    _sae(lm, root, resumed, "train.checkpoint_every=16", "train.stop_after_steps=24")
    _sae(lm, root, resumed, "train.checkpoint_every=16", "train.resume=true")
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_section5_analyses_run_from_the_cli(lm_run, sae_runs, tmp_path):
    lm, root = lm_run
    out = tmp_path / "an"
    run_cli("analyze", f"ckpt={lm}", f"saes=[{sae_runs['mlp_in']},{sae_runs['mlp_out']}]", f"data_root={root}",
            f"out={out}", "analyses=[interactions,negation,lowrank]", "interactions.n_sequences=16")
    m = json.loads((out / "metrics.json").read_text())
    assert m["lowrank"]["full_rank_exactness"]["rel_error"] < 1e-4
    assert m["lowrank"]["mean_corr"][-1] == pytest.approx(1.0, abs=1e-5)
    assert len(m["negation"]["pair"]) == 2 and m["negation"]["decoder_cosine"] < 1
    assert m["interactions"]["cross_std"] > 0
    for f in ("interactions/interactions.png", "negation/negation.png", "lowrank/lowrank.png", "lowrank/lowrank_features.csv"):
        assert (out / f).is_file(), f
    run_cli("analyze", f"runs=[{sae_runs['mlp_in']},{sae_runs['mlp_out']}]", f"data_root={root}", f"out={tmp_path / 'q'}",
            "analyses=[sae_quality,sae_training_length]", "interactions.n_sequences=8")
    q = json.loads((tmp_path / "q" / "metrics.json").read_text())
    assert len(q["sae_quality"]["rows"]) == 2 and len(q["sae_training_length"]["rows"]) == 1
    # C15's paired comparison: the mlp_in - mlp_out loss added of layer 1 on the same windows, with its spread
    pair = q["sae_quality"]["paired"]["1"]
    assert pair["diff"] == pytest.approx(pair["mlp_in"] - pair["mlp_out"]) and pair["se"] > 0 and pair["n_chunks"] >= 2
    assert m["exactness_checks"] and all(c["passed"] for c in q["exactness_checks"].values())  # C1 counts them


def test_sae_bad_inputs_are_one_line_errors(lm_run, sae_runs, tmp_path):
    lm, root = lm_run
    # an SAE whose d_model does not match the LM's, at training ...
    p = _sae(lm, root, tmp_path / "bad", "model.d_model=7", check=False)
    assert p.returncode == 2 and "does not match the LM's d_model" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    # ... and at analysis: a dictionary of another width handed to this LM
    fake = tmp_path / "fake_sae"
    fake.mkdir()
    cfg = OmegaConf.load(sae_runs["mlp_in"] / "config.yaml")
    cfg.model.d_model = 5
    OmegaConf.save(cfg, fake / "config.yaml")
    save_file({k: v.contiguous() for k, v in TopKSAE(5, cfg.model.expansion, cfg.model.k).state_dict().items()}, str(fake / "model.safetensors"))
    (fake / "lm.json").write_text((sae_runs["mlp_in"] / "lm.json").read_text())
    p = run_cli("analyze", f"ckpt={lm}", f"saes=[{fake}]", f"data_root={root}", "analyses=[lowrank]", check=False)
    assert p.returncode == 2 and "does not match the LM's d_model" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    # no lm=, an LM that is not an LM, an analysis without the SAEs it needs
    p = run_cli("train", "task=sae", "scale=tiny", f"hydra.run.dir={tmp_path / 'x'}", check=False)
    assert p.returncode == 2 and "lm=" in p.stderr
    p = run_cli("train", "task=sae", "scale=tiny", f"lm={sae_runs['mlp_in']}", f"hydra.run.dir={tmp_path / 'y'}", check=False)
    assert p.returncode == 2 and "not a language model" in p.stderr
    p = run_cli("analyze", f"ckpt={lm}", f"data_root={root}", "analyses=[negation]", check=False)
    assert p.returncode == 2 and "saes=" in p.stderr
    p = run_cli("analyze", f"ckpt={sae_runs['mlp_in']}", f"data_root={root}", check=False)  # an SAE alone
    assert p.returncode == 2 and "analysed with its LM" in p.stderr


def test_probe_scan_finds_a_planted_and_gate():
    """E11's check on stories: read every Q_a on a negation and a sentiment direction. Output 0 = +n·s and
    output 1 = -n·s are ANDs of opposite sign with no self-interaction; output 2 = n·n is not an AND."""
    from types import SimpleNamespace

    from bilinear.analyses.negation import probe_and, probe_pair, probe_scan

    d = 6
    W = torch.zeros(3, d, dtype=torch.float64)
    V = torch.zeros(3, d, dtype=torch.float64)
    W[0, 0], V[0, 1] = 1.0, 1.0  # n * s
    W[1, 0], V[1, 1] = 1.0, -1.0  # -(n * s)
    W[2, 0], V[2, 0] = 1.0, 1.0  # n * n
    form = BilinearForm(W, V, torch.eye(3, dtype=torch.float64))
    model = SimpleNamespace(bilinear_form=lambda layer: form, embed=SimpleNamespace(weight=torch.zeros(1, d)))
    sae_out = SimpleNamespace(layer=0, model=SimpleNamespace(W_enc=torch.eye(3, dtype=torch.float64)))
    e = torch.eye(d, dtype=torch.float64)
    scan = probe_scan(model, sae_out, e[0], e[1])
    assert torch.allclose(scan["cross"], torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(scan["self_n"], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    assert probe_pair(scan) == [0, 1]
    assert probe_and(scan, 0)["holds"] and probe_and(scan, 1)["holds"] and not probe_and(scan, 2)["holds"]
