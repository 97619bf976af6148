"""Property tests of the maths (PAPER.md §1) on random weights, embeddings and biases."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bilinear.decompose import (
    BilinearForm,
    canonical_sign,
    decompose_outputs,
    eigendecompose,
    effective_rank,
    hosvd,
    interaction_matrices,
    output_tensor,
    reconstruct,
    reexpress,
    symmetrize,
)
from bilinear.errors import ExactnessError
from bilinear.models.image import ImageClassifier

dims = st.integers(min_value=1, max_value=9)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def random_form(seed: int, d: int, h: int, o: int, n: int | None = None, bias: bool = False) -> BilinearForm:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    if bias:
        n = n or d
        E = torch.zeros(d + 1, n + 1, dtype=torch.float64)
        E[:d, :n], E[:d, n], E[d, n] = r(d, n), r(d), 1.0
        return BilinearForm(r(h, d + 1), r(h, d + 1), r(o, h), embed=E, const=r(o), homogeneous=True)
    return BilinearForm(r(h, d), r(h, d), r(o, h), embed=None if n is None else r(d, n))


def naive_tensor(form: BilinearForm) -> torch.Tensor:
    """B_o = sum_h P_oh w_h v_h^T, materialized, unsymmetrized: the definition, for comparison."""
    return torch.einsum("oh,hi,hj->oij", form.P, form.W, form.V)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, d=dims, h=dims, o=dims, k=st.integers(1, 5))
def test_interaction_matrix_matches_definition_and_output(seed, d, h, o, k):
    form = random_form(seed, d, h, o)
    U = torch.randn(k, o, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    Q = interaction_matrices(form, U, chunk=2)  # small chunks exercise the batching
    expected = symmetrize(torch.einsum("ko,oij->kij", U, naive_tensor(form)))
    torch.testing.assert_close(Q, expected)
    torch.testing.assert_close(Q, Q.transpose(-1, -2))
    x = torch.randn(7, d, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64)
    torch.testing.assert_close(torch.einsum("ni,kij,nj->nk", x, Q, x), form.forward(x) @ U.T)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, d=dims, h=dims, o=dims, n=dims, bias=st.booleans())
def test_reconstruction_equals_forward_with_embedding_and_biases(seed, d, h, o, n, bias):
    form = random_form(seed, d, h, o, n=n, bias=bias)
    x = torch.rand(11, n, generator=torch.Generator().manual_seed(seed + 3), dtype=torch.float64)
    eig = decompose_outputs(form, torch.eye(o, dtype=torch.float64))
    torch.testing.assert_close(reconstruct(eig, form.to_z(x)), form.forward(x))
    # the pixel-space vectors E^T v are not orthonormal, but the identity still holds (PAPER.md §1)
    via_input = (torch.einsum("nm,crm->ncr", form.lift(x), eig.input_vectors).square() * eig.values).sum(-1)
    torch.testing.assert_close(via_input, form.forward(x))


@settings(max_examples=20, deadline=None)
@given(seed=seeds, bias=st.booleans())
def test_image_model_form_reproduces_its_logits(seed, bias):
    torch.manual_seed(seed)
    model = ImageClassifier(d_input=12, d_hidden=6, n_classes=3, bias=bias).double()
    x = torch.rand(9, 12, dtype=torch.float64)
    form = model.bilinear_form()
    eig = decompose_outputs(form, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(reconstruct(eig, form.to_z(x)), model(x).detach())


@settings(max_examples=30, deadline=None)
@given(seed=seeds, d=dims)
def test_antisymmetric_part_contributes_nothing(seed, d):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    anti = A - A.T
    x = torch.randn(5, d, generator=g, dtype=torch.float64)
    torch.testing.assert_close(torch.einsum("ni,ij,nj->n", x, anti, x), torch.zeros(5, dtype=torch.float64))
    # and eigendecompose sees only the symmetric part: adding an antisymmetric matrix changes nothing
    S = symmetrize(A)
    e1, e2 = eigendecompose(S[None]), eigendecompose((S + anti)[None])
    torch.testing.assert_close(e1.values, e2.values)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, d=st.integers(2, 10))
def test_ordering_by_magnitude_and_canonical_sign(seed, d):
    g = torch.Generator().manual_seed(seed)
    Q = symmetrize(torch.randn(3, d, d, generator=g, dtype=torch.float64))
    eig = eigendecompose(Q)
    mags = eig.values.abs()
    assert (mags[:, :-1] >= mags[:, 1:] - 1e-12).all(), "top means largest |lambda| first"
    # largest-|entry| of every eigenvector is positive
    idx = eig.vectors.abs().argmax(-1, keepdim=True)
    assert (torch.gather(eig.vectors, -1, idx) > 0).all()
    # orthonormal rows that rebuild Q
    torch.testing.assert_close(eig.vectors @ eig.vectors.transpose(-1, -2), torch.eye(d, dtype=torch.float64).expand(3, d, d))
    torch.testing.assert_close(torch.einsum("kr,kri,krj->kij", eig.values, eig.vectors, eig.vectors), Q)
    # the decomposition of -v is the same: flipping a sign and re-canonicalising gives the same vectors
    flipped = -eig.vectors
    torch.testing.assert_close(flipped * canonical_sign(flipped).unsqueeze(-1), eig.vectors)


def test_positive_and_negative_selection_is_not_by_magnitude():
    Q = torch.diag(torch.tensor([-5.0, 3.0, 1.0, -0.5], dtype=torch.float64))[None]
    eig = eigendecompose(Q)
    assert eig.values[0].tolist() == [-5.0, 3.0, 1.0, -0.5]
    _, pos = eig.positive(2)
    _, neg = eig.negative(1)
    assert pos[0].tolist() == [3.0, 1.0] and neg[0].tolist() == [-5.0]


def test_signed_selection_never_returns_the_other_sign():
    """A class with fewer than k positive (negative) eigenvalues: the selection stops there (issue 12's bug)."""
    Q = torch.stack([torch.diag(torch.tensor(v, dtype=torch.float64)) for v in ([4.0, -3.0, -2.0, -1.0],
                                                                                 [2.0, 1.0, 0.5, -0.1])])
    eig = eigendecompose(Q)
    idx, pos = eig.positive(3)
    assert pos.shape == (2, 1) and (pos > 0).all()  # class 0 has one positive eigenvalue, so one column for both
    assert torch.equal(torch.gather(eig.values, 1, idx), pos)
    _, neg = eig.negative(3)
    assert neg.shape == (2, 1) and (neg < 0).all()
    i0, p0 = eig.positive_in(0, 3)
    i1, p1 = eig.positive_in(1, 3)
    assert p0.tolist() == [4.0] and p1.tolist() == [2.0, 1.0, 0.5] and eig.values[1, i1].tolist() == [2.0, 1.0, 0.5]
    assert eig.negative_in(0, 5)[1].tolist() == [-3.0, -2.0, -1.0] and eig.negative_in(1, 5)[1].tolist() == [-0.1]


def test_spectrum_bars_hold_only_their_own_sign():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bilinear import plots

    fig, ax = plt.subplots()
    plots.eigenvalue_bars(ax, torch.tensor([3.0, -1.0, -2.0, -4.0]), n=3)
    heights = [b.get_height() for b in ax.patches]  # red bars first, then blue
    assert heights == [3.0, -4.0, -2.0, -1.0]
    plt.close(fig)


@pytest.mark.parametrize("where", ["W", "P", "embed"])
def test_non_finite_weights_are_an_exactness_error(where):
    form = random_form(0, 3, 4, 2, n=5)
    bad = getattr(form, where).clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ExactnessError, match="non-finite"):
        BilinearForm(**{**{k: getattr(form, k) for k in ("W", "V", "P", "embed")}, where: bad})
    Q = interaction_matrices(form, torch.eye(2, dtype=torch.float64))
    Q[0, 1, 1] = float("inf")
    with pytest.raises(ExactnessError, match="interaction matrices"):
        eigendecompose(Q)


def test_truncation_keeps_top_k_by_magnitude():
    Q = torch.diag(torch.tensor([-5.0, 3.0, 0.1], dtype=torch.float64))[None]
    eig = eigendecompose(Q)
    z = torch.ones(1, 3, dtype=torch.float64)
    assert reconstruct(eig, z, k=1).item() == -5.0
    assert abs(reconstruct(eig, z, k=2).item() - (-2.0)) < 1e-12


@given(k=st.integers(1, 20), value=st.floats(0.1, 100))
def test_effective_rank_counts_equal_nonzeros(k, value):
    z = torch.zeros(30, dtype=torch.float64)
    z[:k] = value
    assert abs(effective_rank(z).item() - k) < 1e-9


@settings(max_examples=20, deadline=None)
@given(seed=seeds, d=dims, h=dims, o=dims)
def test_hosvd_reconstructs_tensor_with_symmetric_factors(seed, d, h, o):
    B = output_tensor(random_form(seed, d, h, o))
    f = hosvd(B)
    torch.testing.assert_close(f.reconstruct(), B)
    live = f.S > 1e-9 * f.S.max()  # directions with zero singular value are arbitrary, not symmetric
    torch.testing.assert_close(f.Q[live], f.Q[live].transpose(-1, -2))
    assert (f.S[:-1] >= f.S[1:] - 1e-12).all()


@settings(max_examples=20, deadline=None)
@given(seed=seeds, d=dims, h=dims, o=st.integers(1, 4))
def test_reexpress_in_an_overcomplete_basis(seed, d, h, o):
    B = output_tensor(random_form(seed, d, h, o))
    U = torch.randn(o + 2, o, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    Q, Uinv = reexpress(B, U)
    torch.testing.assert_close(torch.einsum("ok,kij->oij", Uinv, Q), B)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, d=dims, h=dims, o=dims, n=dims)
def test_bias_interactions_split_the_homogeneous_form(seed, d, h, o, n):
    """x^T A x + b.x + c equals every output of a form with an embedding and biases folded in."""
    from bilinear.decompose import bias_interactions

    form = random_form(seed, d, h, o, n=n, bias=True)
    x = torch.randn(7, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    A, b, c = bias_interactions(form, output_tensor(form))
    pred = torch.einsum("ni,oij,nj->no", x, A, x) + x @ b.T + c
    assert torch.allclose(pred, form.forward(x), atol=1e-9 * (1 + form.forward(x).abs().max()))
    assert torch.allclose(A, A.transpose(-1, -2))


@settings(max_examples=30, deadline=None)
@given(seed=seeds, r=st.integers(1, 6), extra=st.integers(0, 10))
def test_pseudoinverse_keys_activate_only_their_own_vector(seed, r, extra):
    from bilinear.decompose import pseudoinverse_keys

    vecs = torch.randn(r, r + extra, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    keys = pseudoinverse_keys(vecs)
    assert keys.shape == vecs.shape
    assert torch.allclose(keys @ vecs.T, torch.eye(r, dtype=torch.float64), atol=1e-8)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, r=st.integers(1, 6), n=st.integers(2, 12))
def test_abs_cosine_is_sign_and_permutation_invariant(seed, r, n):
    """|cos| (E4 consistency) is 1 for the same vectors with flipped signs, matches the matrix form, lies in [0, 1]."""
    from bilinear.decompose import abs_cosine, abs_cosine_matrix

    g = torch.Generator().manual_seed(seed)
    A = torch.randn(r, n, dtype=torch.float64, generator=g)
    B = torch.randn(r, n, dtype=torch.float64, generator=g)
    signs = torch.where(torch.rand(r, 1, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    torch.testing.assert_close(abs_cosine(A, signs * 3.0 * A), torch.ones(r, dtype=torch.float64))
    sim = abs_cosine(A, B)
    assert ((sim >= 0) & (sim <= 1 + 1e-12)).all()
    torch.testing.assert_close(abs_cosine(signs * A, B), sim)
    M = abs_cosine_matrix(A, B)
    torch.testing.assert_close(M.diagonal(), sim)
    perm = torch.randperm(r, generator=g)
    torch.testing.assert_close(abs_cosine_matrix(A, -B[perm]), M[:, perm])
