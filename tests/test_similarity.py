"""Issue 17, part 1: exact weight-only similarity between bilinear models (bilinear.similarity) and the cross-run
analysis ``similarity``. The Gram-matrix formula is checked against the materialised input-space tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from bilinear.decompose import BilinearForm, output_tensor
from bilinear.similarity import class_inner_products, input_factors, similarity, similarity_matrix
from conftest import run_cli
from test_cross_analyses import copy_run


def random_form(g: torch.Generator, h: int, d: int, o: int, n: int, embed: bool, bias: bool) -> BilinearForm:
    """A random form; with ``bias`` the lifted input is [x, 1], the embedding carries the constant (E' = [[E, b],
    [0, 1]]) and there is an output bias, as in models/image.py."""
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    if not embed:
        d = n + int(bias)
    W, V, P = r(h, d), r(h, d), r(o, h)
    E = None
    if embed:
        if bias:
            E = torch.zeros(d + 1, n + 1, dtype=torch.float64)
            E[:d, :n], E[:d, n], E[d, n] = r(d, n), r(d), 1.0
            W, V = torch.cat([W, r(h, 1)], 1), torch.cat([V, r(h, 1)], 1)
        else:
            E = r(d, n)
    return BilinearForm(W, V, P, embed=E, const=r(o) if bias else None, homogeneous=bias)


def materialised(form: BilinearForm) -> torch.Tensor:
    """The symmetric tensor in the lifted input space, (o, n, n): E^T B_c E with B from decompose.output_tensor."""
    B = output_tensor(form)  # (o, d, d), symmetrised, output bias on the constant coordinate
    return B if form.embed is None else form.embed.T @ B @ form.embed


def padded(B: torch.Tensor) -> torch.Tensor:
    """A tensor on x (o, n, n) as the same tensor on [x, 1] (o, n+1, n+1): zero wherever the constant enters."""
    return torch.nn.functional.pad(B, (0, 1, 0, 1))


form_args = st.tuples(st.integers(1, 6), st.integers(1, 5), st.booleans(), st.booleans())  # h, d, embed, bias


@settings(max_examples=60, deadline=None)
@given(a=form_args, b=form_args, o=st.integers(1, 4), n=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_gram_inner_products_equal_the_materialised_tensor(a, b, o, n, seed):
    g = torch.Generator().manual_seed(seed)
    fa, fb = random_form(g, a[0], a[1], o, n, a[2], a[3]), random_form(g, b[0], b[1], o, n, b[2], b[3])
    Ba, Bb = materialised(fa), materialised(fb)
    if fa.homogeneous != fb.homogeneous:  # a form without biases is compared on [x, 1] with zeros on the constant
        Ba, Bb = (Ba, padded(Bb)) if fa.homogeneous else (padded(Ba), Bb)
    want = torch.einsum("cij,dij->cd", Ba, Bb)
    got = class_inner_products(input_factors(fa), input_factors(fb))
    scale = Ba.flatten(1).norm(dim=1)[:, None] * Bb.flatten(1).norm(dim=1)[None, :]
    assert ((got - want).abs() / scale.clamp_min(1e-300)).max() < 1e-6
    s = similarity(input_factors(fa), input_factors(fb))
    want_total = (Ba * Bb).sum() / (Ba.norm() * Bb.norm())
    assert abs(s.total - float(want_total)) < 1e-6
    want_class = (Ba * Bb).sum((1, 2)) / (Ba.flatten(1).norm(dim=1) * Bb.flatten(1).norm(dim=1))
    assert torch.allclose(s.per_class, want_class, rtol=1e-6, atol=1e-9)


def test_similarity_sees_the_function_not_the_hidden_basis():
    """Permuting and sign-flipping hidden units, swapping W and V (the symmetrisation's cross term) and scaling the
    output leave the tensor's direction unchanged; a different layer does not."""
    g = torch.Generator().manual_seed(0)
    f = random_form(g, 7, 5, 3, 9, embed=True, bias=False)
    perm, sign = torch.randperm(7, generator=g), torch.where(torch.rand(7, generator=g) < 0.5, -1.0, 1.0).double()
    same = BilinearForm((sign[:, None] * f.V)[perm], (sign[:, None] * f.W)[perm], 2.5 * f.P[:, perm], embed=f.embed)
    s = similarity(input_factors(f), input_factors(same))
    assert s.total == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(s.per_class, torch.ones(3, dtype=torch.float64), atol=1e-12)
    # the unsymmetrised tensor would see the swap: <A, A^T> < ||A||^2 for these random factors
    A = torch.einsum("oh,hi,hj->oij", f.P, f.W @ f.embed, f.V @ f.embed)
    assert float((A * A.transpose(1, 2)).sum() / A.square().sum()) < 0.99
    neg = similarity(input_factors(f), input_factors(BilinearForm(f.W, -f.V, f.P, embed=f.embed)))
    assert neg.total == pytest.approx(-1.0, abs=1e-12)
    other = similarity(input_factors(f), input_factors(random_form(g, 7, 5, 3, 9, embed=True, bias=False)))
    assert abs(other.total) < 0.9


def test_similarity_matrix_is_symmetric_with_unit_diagonal():
    g = torch.Generator().manual_seed(1)
    fs = [input_factors(random_form(g, 4, 3, 2, 5, embed=True, bias=i == 1)) for i in range(3)]
    total, per_class = similarity_matrix(fs)
    assert torch.allclose(total, total.T) and torch.allclose(total.diagonal(), torch.ones(3, dtype=torch.float64))
    assert per_class.shape == (2, 3, 3) and torch.allclose(per_class, per_class.transpose(1, 2))
    assert total[0, 1] == pytest.approx(similarity(fs[0], fs[1]).total)


def test_forms_on_different_inputs_are_refused():
    g = torch.Generator().manual_seed(2)
    a, b = random_form(g, 3, 3, 2, 5, True, False), random_form(g, 3, 3, 2, 6, True, False)
    with pytest.raises(ValueError, match="different input spaces"):
        similarity(input_factors(a), input_factors(b))


# --- the analysis from the CLI on copies of the tiny run --------------------------------------------------------
def scale_and_permute(run: Path, seed: int, scale: float = 1.0, noise: float = 0.0) -> None:
    """Permute the hidden units of a run (same function, another basis); optionally scale the head (same direction)
    or perturb the bilinear weights (another function)."""
    w = load_file(str(run / "model.safetensors"))
    proj, P = w["layers.0.proj.weight"], w["head.weight"]
    h = proj.shape[0] // 2
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(h, generator=g)
    W, V = proj[:h][perm], proj[h:][perm]
    if noise:
        W = W + noise * W.std() * torch.randn(W.shape, generator=g)
    w.update({"layers.0.proj.weight": torch.cat([W, V]), "head.weight": scale * P[:, perm]})
    save_file({k: v.contiguous() for k, v in w.items()}, str(run / "model.safetensors"))


def widen(run: Path, dst: Path, d_hidden: int, seed: int, noise: float = 0.0) -> Path:
    """A copy of a run with d_hidden zero-padded to ``d_hidden`` (the same function in a wider model), seed set, and
    optionally its W perturbed (another function)."""
    copy_run(run, dst, seed=seed, model__d_hidden=d_hidden)
    w = load_file(str(dst / "model.safetensors"))
    E, proj, P = w["embed.weight"], w["layers.0.proj.weight"], w["head.weight"]
    h = proj.shape[0] // 2
    W, V = torch.zeros(d_hidden, d_hidden), torch.zeros(d_hidden, d_hidden)
    W[:h, :h], V[:h, :h] = proj[:h], proj[h:]
    if noise:
        W[:h, :h] += noise * proj[:h].std() * torch.randn(h, h, generator=torch.Generator().manual_seed(seed))
    w.update({"embed.weight": torch.cat([E, torch.zeros(d_hidden - h, E.shape[1])]),
              "layers.0.proj.weight": torch.cat([W, V]), "head.weight": torch.cat([P, torch.zeros(P.shape[0], d_hidden - h)], 1)})
    save_file({k: v.contiguous() for k, v in w.items()}, str(dst / "model.safetensors"))
    return dst


def test_similarity_analysis_from_the_cli(tiny_mnist_run, tmp_path):
    a = copy_run(tiny_mnist_run, tmp_path / "a", seed=0)
    b = copy_run(tiny_mnist_run, tmp_path / "b", seed=1)
    scale_and_permute(b, seed=3, scale=3.0)  # same function in another hidden basis, scaled: cosine 1
    c = widen(tiny_mnist_run, tmp_path / "c", 64, seed=0)  # the same function in a wider model: cosine 1 with a
    d = widen(tiny_mnist_run, tmp_path / "d", 64, seed=1, noise=1.0)  # another function
    out = tmp_path / "cross"
    run_cli("analyze", f"runs=[{d},{c},{b},{a}]", f"out={out}", "analyses=[similarity]")
    m = json.loads((out / "metrics.json").read_text())
    s = m["similarity"]
    assert s["varying"] == ["model.d_hidden"]
    assert [r["name"] for r in s["runs"]] == ["a", "b", "c", "d"]  # sorted by d_hidden, then seed
    g32, g64 = s["groups"]["d_hidden=32"], s["groups"]["d_hidden=64"]
    assert g32["n_pairs"] == 1 and g32["seed_pair_mean"] == pytest.approx(1.0, abs=1e-9)
    assert g32["per_class_mean"] == pytest.approx([1.0] * 10, abs=1e-9)
    assert g64["n_pairs"] == 1 and g64["seed_pair_mean"] < 0.99
    assert s["seed_pair_by_value"] == {"32": pytest.approx(1.0, abs=1e-9), "64": g64["seed_pair_mean"]}
    assert s["matrix"][0][2] == pytest.approx(1.0, abs=1e-9)  # across widths: a and its zero-padded copy
    assert s["matrix"][2][3] == pytest.approx(g64["seed_pair_mean"]) and s["matrix"][3][3] == 1.0
    assert s["reference"] == "c"  # the largest d_hidden, lowest seed
    assert (out / "similarity" / "similarity.png").is_file() and (out / "similarity" / "similarity.json").is_file()
    checks = m["exactness_checks"]
    assert len(checks) == 4 and all(v["passed"] and v["rel_error"] < 1e-5 for v in checks.values())
    assert not (a / "analysis").exists()  # weight-only: nothing is written into the runs
    assert s["eigenvector_cosines_between_seeds"] == {}
    # beside a consistency analysis of the same runs, E4's eigenvector cosines are read for the comparison
    run_cli("analyze", f"runs=[{d},{c},{b},{a}]", f"out={out}", "analyses=[consistency,similarity]")
    s = json.loads((out / "metrics.json").read_text())["similarity"]
    eig = s["eigenvector_cosines_between_seeds"]
    assert set(eig) == {"d_hidden=32", "d_hidden=64"} and eig["d_hidden=32"]["top1"] == pytest.approx(1.0, abs=1e-6)


def test_similarity_of_a_grid_without_seeds(tiny_mnist_run, tmp_path):
    runs = [copy_run(tiny_mnist_run, tmp_path / f"r{wd}{nz}", train__weight_decay=wd, train__noise_std=nz)
            for wd in (0.0, 1.0) for nz in (0.0, 0.4)]
    for i, r in enumerate(runs[1:]):
        scale_and_permute(r, seed=i, noise=0.3 * (i + 1))
    out = tmp_path / "grid"
    run_cli("analyze", f"runs=[{','.join(map(str, runs))}]", f"out={out}", "analyses=[similarity]")
    s = json.loads((out / "metrics.json").read_text())["similarity"]
    assert s["varying"] == ["train.weight_decay", "train.noise_std"] and s["seed_pair_mean"] == {}
    assert s["reference"] == runs[-1].name and s["to_reference"][runs[-1].name] == 1.0
    assert all(-1 <= v < 1 for k, v in s["to_reference"].items() if k != runs[-1].name)
    assert (out / "similarity" / "similarity.png").is_file()


def test_similarity_of_one_run_is_a_one_line_error(tiny_mnist_run, tmp_path):
    p = run_cli("analyze", f"runs=[{tiny_mnist_run}]", f"out={tmp_path / 'x'}", "analyses=[similarity]", check=False)
    assert p.returncode != 0 and "at least two" in p.stderr
