"""Exact weight-only similarity between bilinear models (issue 17; beyond the paper, after the authors' "tensor
similarity" follow-up), from Gram matrices of the factors, never from the third-order tensor.

A bilinear form (decompose.BilinearForm) is, in its lifted input space x' (pixels, plus the constant coordinate
when biases are folded in), the symmetric third-order tensor

    B[c] = sym(sum_a P[c, a] w_a v_a^T) + const_c e e^T          (o, n, n)

with w_a, v_a the rows of the input-space factors W~ = W E, V~ = V E (h, n) (embedding folded in: the hidden bases of
two runs are unrelated, so only the input space compares seeds or widths) and e the constant coordinate. For two
forms with the same input space, with Gram matrices G_XY = X1 Y2^T (h1, h2):

    <sym A1, sym A2> = 1/2 (<A1, A2> + <A1, A2^T>)       (A_c = sum_a P[c,a] w_a v_a^T, the unsymmetrised slice)
    <A1_c, A2_d>     = P1[c] (G_WW o G_VV) P2[d]^T       (o: element-wise product)
    <A1_c, A2_d^T>   = P1[c] (G_WV o G_VW) P2[d]^T       (the cross term: A2^T swaps the roles of w and v)

so the class-by-class inner products are ``I = 1/2 P1 (G_WW o G_VV + G_WV o G_VW) P2^T`` (o1, o2), plus the output
bias terms on e e^T. The whole tensor's inner product is trace(I); per class it is diag(I). Cosines divide by the
norms, which are the same formula with a form against itself.

Cost per pair: time O(h1 h2 n) (one matmul of the stacked factors), memory O(h1 h2); materialising B is O(o n^2)
memory per run and O(o h n^2) time. Unlike eigenvector comparisons (PAPER.md E4, C7), there is no sign or order
to align: B is unique, so the cosine is exactly invariant to the hidden basis (permutations, sign flips, swapping W
and V) and depends only on the function the layer computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bilinear.decompose import BilinearForm


@dataclass
class InputFactors:
    """A bilinear form in its lifted input space: ``B[c] = sym(sum_a P[c,a] W[a] (x) V[a]) + const_c e e^T``.

    Attributes:
        W, V: (h, n) input-space factors (``W E``, ``V E``; the embedding folded in).
        P: (o, h) output projection.
        const: (o,) output bias on the constant coordinate (the last of n), or None.
        homogeneous: the last input coordinate is the constant 1 (biases folded in).
    """

    W: Tensor
    V: Tensor
    P: Tensor
    const: Tensor | None
    homogeneous: bool

    @property
    def n(self) -> int:
        """Dimension of the lifted input space."""
        return self.W.shape[1]

    @property
    def n_raw(self) -> int:
        """Dimension of the raw input (pixels) without the constant coordinate."""
        return self.n - int(self.homogeneous)

    def stacked(self) -> Tensor:
        """[W; V] (2h, n): one matmul of two stacks gives all four Gram matrices."""
        return torch.cat([self.W, self.V])

    def with_constant(self) -> "InputFactors":
        """The same tensor on [x, 1]: a zero column for the constant coordinate, so a form without biases compares
        with one that has them (its tensor is zero wherever the constant enters)."""
        if self.homogeneous:
            return self
        pad = lambda t: torch.cat([t, t.new_zeros(t.shape[0], 1)], dim=1)  # noqa: E731
        return InputFactors(pad(self.W), pad(self.V), self.P, None, True)


def input_factors(form: BilinearForm, dtype: torch.dtype = torch.float64) -> InputFactors:
    """Fold the embedding into W and V: (h, d) @ (d, n) -> (h, n), in ``dtype`` (float64: sums of h^2 products)."""
    f = form.to(dtype=dtype)
    W, V = (f.W, f.V) if f.embed is None else (f.W @ f.embed, f.V @ f.embed)
    return InputFactors(W, V, f.P, f.const, f.homogeneous)


def _aligned(a: InputFactors, b: InputFactors) -> tuple[InputFactors, InputFactors]:
    if a.homogeneous != b.homogeneous:
        a, b = a.with_constant(), b.with_constant()
    if a.n != b.n:
        raise ValueError(f"the two forms act on different input spaces ({a.n_raw} and {b.n_raw} inputs); "
                         "their tensors cannot be compared")
    return a, b


def _diag_constant(f: InputFactors) -> Tensor:
    """B_c[e, e] without the output bias: (P (w_e o v_e))_c, (o,), the unsymmetrised slice's corner (symmetric)."""
    return f.P @ (f.W[:, -1] * f.V[:, -1])


def class_inner_products(a: InputFactors, b: InputFactors) -> Tensor:
    """``I[c, d] = <B_a[c], B_b[d]>`` (o_a, o_b): Frobenius inner products of every pair of (symmetric) output slices.

    Exact; time O(h_a h_b n), memory O(h_a h_b): the (o, n, n) tensors are never formed.
    """
    a, b = _aligned(a, b)
    h_a, h_b = a.W.shape[0], b.W.shape[0]
    G = a.stacked() @ b.stacked().T  # (2 h_a, 2 h_b): [[W W', W V'], [V W', V V']]
    M = G[:h_a, :h_b] * G[h_a:, h_b:]  # G_WW o G_VV: <A_a, A_b>
    M += G[:h_a, h_b:] * G[h_a:, :h_b]  # G_WV o G_VW: <A_a, A_b^T>, the symmetrisation's cross term
    I = 0.5 * (a.P @ M @ b.P.T)
    if a.const is not None or b.const is not None:
        # B = S + const e e^T: <S_a + k_a E, S_b + k_b E> = <S_a, S_b> + k_b S_a[e,e] + k_a S_b[e,e] + k_a k_b
        ka = a.const if a.const is not None else a.P.new_zeros(a.P.shape[0])
        kb = b.const if b.const is not None else b.P.new_zeros(b.P.shape[0])
        I = I + torch.outer(_diag_constant(a), kb) + torch.outer(ka, _diag_constant(b)) + torch.outer(ka, kb)
    return I


def squared_norms(f: InputFactors) -> Tensor:
    """``||B[c]||_F^2`` per output, (o,)."""
    return class_inner_products(f, f).diagonal()


@dataclass
class Similarity:
    """Cosines between two models' tensors.

    Attributes:
        total: cosine of the whole tensors, <B_a, B_b> / (||B_a|| ||B_b||), in [-1, 1].
        per_class: (o,) cosine of each class's interaction matrix Q_c (same output space required).
        inner: (o, o) the class inner products I; norms_a, norms_b: (o,) squared norms.
    """

    total: float
    per_class: Tensor
    inner: Tensor
    norms_a: Tensor
    norms_b: Tensor


def similarity(a: InputFactors, b: InputFactors, norms_a: Tensor | None = None, norms_b: Tensor | None = None,
               eps: float = 1e-300) -> Similarity:
    """Total and per-class cosine between two forms with the same input and output spaces.

    ``norms_a``/``norms_b`` (o,) may be passed in when computed once per run (a sweep of R runs then costs R + R(R-1)/2
    Gram products, not 3 per pair).
    """
    if a.P.shape[0] != b.P.shape[0]:
        raise ValueError(f"the two forms have different outputs ({a.P.shape[0]} and {b.P.shape[0]}); "
                         "only the same outputs compare class by class")
    I = class_inner_products(a, b)
    na = squared_norms(a) if norms_a is None else norms_a
    nb = squared_norms(b) if norms_b is None else norms_b
    per_class = I.diagonal() / (na * nb).sqrt().clamp_min(eps)
    total = I.diagonal().sum() / (na.sum() * nb.sum()).sqrt().clamp_min(eps)
    return Similarity(float(total), per_class, I, na, nb)


def similarity_matrix(factors: list[InputFactors]) -> tuple[Tensor, Tensor]:
    """All pairs of a list of R forms: total cosines (R, R) and per-class cosines (o, R, R); diagonals are 1.

    Norms are computed once per form; each unordered pair once.
    """
    R = len(factors)
    norms = [squared_norms(f) for f in factors]
    o = norms[0].shape[0]
    total = torch.eye(R, dtype=torch.float64)
    per_class = torch.eye(R, dtype=torch.float64).repeat(o, 1, 1)
    for i in range(R):
        for j in range(i + 1, R):
            s = similarity(factors[i], factors[j], norms[i], norms[j])
            total[i, j] = total[j, i] = s.total
            per_class[:, i, j] = per_class[:, j, i] = s.per_class.double().cpu()
    return total, per_class
