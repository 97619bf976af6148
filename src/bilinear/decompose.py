"""The mathematics of PAPER.md §1, on plain tensors. Every analysis calls this module; none re-derives it.

A model answers one question for this module: "what are your bilinear weights in input space?", by
returning a :class:`BilinearForm`. Everything else (interaction matrices, eigendecomposition with its
ordering and sign conventions, truncation, effective rank, HOSVD) is a pure function of that form.

Notation (PAPER.md §1):
    x   raw input, (..., n_raw)
    x'  lifted input, ``[x, 1]`` when biases are folded in through the homogeneous coordinate, (..., n)
    z   the decomposition space, ``z = E x'`` (the hidden space of the image model), (..., d)
    out = P((W z) * (V z)) + c,    W, V: (h, d),  P: (o, h),  c: (o,)
    Q_u = sym(W^T diag(P^T u) V)  (+ (u.c) e_d e_d^T for the folded output bias),  u.out = z^T Q_u z
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from bilinear.errors import ExactnessError


@dataclass
class BilinearForm:
    """A bilinear layer expressed in its decomposition space (PAPER.md §1, "Folding in embeddings and biases").

    Attributes:
        W, V: (h, d) left and right projections acting on z.
        P: (o, h) output projection (the head of the image model, W_out of a transformer MLP).
        embed: (d, n) map from the lifted input x' to z, or None when z = x'.
        const: (o,) output bias; requires ``homogeneous`` so it can sit on the constant coordinate.
        homogeneous: the last coordinate of x' (and therefore of z) is the constant 1.
    """

    W: Tensor
    V: Tensor
    P: Tensor
    embed: Tensor | None = None
    const: Tensor | None = None
    homogeneous: bool = False

    def __post_init__(self) -> None:
        h, d = self.W.shape
        if self.V.shape != (h, d) or self.P.shape[1] != h:
            raise ValueError(f"inconsistent shapes W {tuple(self.W.shape)}, V {tuple(self.V.shape)}, P {tuple(self.P.shape)}")
        if self.embed is not None and self.embed.shape[0] != d:
            raise ValueError(f"embed {tuple(self.embed.shape)} does not map into the {d}-dim space of W")
        if self.const is not None and not self.homogeneous:
            raise ValueError("an output bias can only be folded in with a homogeneous coordinate")
        for name in ("W", "V", "P", "embed", "const"):
            require_finite(getattr(self, name), f"weights {name}")

    @property
    def d(self) -> int:
        """Dimension of the decomposition space z."""
        return self.W.shape[1]

    @property
    def n_outputs(self) -> int:
        return self.P.shape[0]

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "BilinearForm":
        cast = lambda t: None if t is None else t.detach().to(device=device, dtype=dtype)  # noqa: E731
        return replace(self, W=cast(self.W), V=cast(self.V), P=cast(self.P), embed=cast(self.embed), const=cast(self.const))

    def lift(self, x: Tensor) -> Tensor:
        """x (..., n_raw) -> x' (..., n): append the constant coordinate when biases are folded in."""
        if not self.homogeneous:
            return x
        return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1)

    def to_z(self, x: Tensor) -> Tensor:
        """Raw input (..., n_raw) -> decomposition space (..., d)."""
        x = self.lift(x.to(self.W.dtype))
        return x if self.embed is None else x @ self.embed.T

    def forward(self, x: Tensor) -> Tensor:
        """The layer's own output computed from the form, (..., n_raw) -> (..., o). Used to check folding."""
        z = self.to_z(x)
        out = ((z @ self.W.T) * (z @ self.V.T)) @ self.P.T
        return out if self.const is None else out + self.const


def require_finite(t: Tensor | None, what: str) -> None:
    """ExactnessError naming ``what`` when t holds NaN or inf.

    A NaN passes every ``error > tol`` test (comparisons with NaN are False), so the exactness gate alone would
    let a diverged model through; this check makes it a one-line error instead.
    """
    if t is not None and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ExactnessError(f"{what} hold {bad} non-finite (NaN/inf) value(s) of {t.numel()}; there is no decomposition to check")


def symmetrize(A: Tensor) -> Tensor:
    """(A + A^T)/2 over the last two dims. eigh reads one triangle only, so this must precede every eigh."""
    return 0.5 * (A + A.transpose(-1, -2))


def interaction_matrices(form: BilinearForm, U: Tensor, chunk: int = 64) -> Tensor:
    """Symmetric interaction matrices Q_u for a batch of output directions (PAPER.md §1).

    Args:
        U: (k, o) output directions (rows). ``U = I`` gives the full third-order tensor B.
    Returns:
        Q: (k, d, d), symmetric, with ``u.out(x) = z^T Q_u z`` exactly.

    Costs O(k h d^2) and never materializes the (o, d, d) tensor: each chunk only holds (chunk, d, d).
    """
    U = U.to(form.W.dtype)
    coeff = U @ form.P  # (k, h): the diagonal of diag(P^T u) for every u
    d = form.d
    out = torch.empty(U.shape[0], d, d, dtype=form.W.dtype, device=form.W.device)
    for start in range(0, U.shape[0], chunk):
        # W^T diag(c) V for each row c, as a batched matmul over the hidden units: (m, d, h) @ (h, d) -> (m, d, d).
        # Measured 1.7x faster than the equivalent einsum at d 512, h 2048 (scripts/bench_sae_features.py).
        block = (form.W.T.unsqueeze(0) * coeff[start : start + chunk].unsqueeze(1)) @ form.V
        out[start : start + chunk] = symmetrize(block)
    if form.const is not None:
        out[:, -1, -1] += U @ form.const
    return out


def output_tensor(form: BilinearForm) -> Tensor:
    """The symmetrized third-order tensor B, (o, d, d), with ``out_o = z^T B_o z``. Small models only."""
    eye = torch.eye(form.n_outputs, dtype=form.W.dtype, device=form.W.device)
    return interaction_matrices(form, eye)


def canonical_sign(vectors: Tensor, reference: Tensor | None = None) -> Tensor:
    """Per-vector signs (..., r) that make each reference vector's largest-|entry| positive.

    Eigenvectors are defined up to sign; this convention is deterministic so figures and caches agree
    between runs. ``reference`` (..., r, n) defaults to ``vectors`` (..., r, d); pass the pixel-space
    vectors to fix signs where they are looked at.
    """
    ref = vectors if reference is None else reference
    idx = ref.abs().argmax(dim=-1, keepdim=True)
    sign = torch.sign(torch.gather(ref, -1, idx)).squeeze(-1)
    return torch.where(sign == 0, torch.ones_like(sign), sign)


@dataclass
class Eigen:
    """Eigendecomposition of a batch of interaction matrices, ordered by |lambda| descending.

    Attributes:
        values: (k, r) eigenvalues; ``values[c, 0]`` has the largest magnitude.
        vectors: (k, r, d) orthonormal eigenvectors as ROWS, in the decomposition space z.
        input_vectors: (k, r, n) the same vectors mapped to the lifted input space (``E^T v``), or None.
            Not orthonormal, but ``z^T Q z = sum_i lambda_i (input_vectors_i . x')^2`` still holds exactly.
    """

    values: Tensor
    vectors: Tensor
    input_vectors: Tensor | None = None

    def top(self, k: int) -> "Eigen":
        """The k eigenpairs of largest |lambda| per matrix."""
        iv = None if self.input_vectors is None else self.input_vectors[:, :k]
        return Eigen(self.values[:, :k], self.vectors[:, :k], iv)

    def positive(self, k: int) -> tuple[Tensor, Tensor]:
        """Indices and values (k_mat, k') of the most positive eigenvalues per matrix (by value, not |lambda|).

        Only eigenvalues > 0 are returned: k' = min(k, the fewest positive eigenvalues of any matrix), so a matrix
        with fewer than k of them never contributes a negative value in their place. Use :meth:`positive_in` for
        one matrix's own (up to k) positive eigenvalues.
        """
        return self._signed(k, 1.0)

    def negative(self, k: int) -> tuple[Tensor, Tensor]:
        """Indices and values (k_mat, k') of the most negative eigenvalues (< 0) per matrix; k' as in :meth:`positive`."""
        return self._signed(k, -1.0)

    def positive_in(self, c: int, k: int) -> tuple[Tensor, Tensor]:
        """Matrix c's up-to-k most positive eigenvalues (> 0): indices and values, each (k_c,), k_c <= k."""
        idx, vals = self._signed(k, 1.0, self.values[c : c + 1])
        return idx[0], vals[0]

    def negative_in(self, c: int, k: int) -> tuple[Tensor, Tensor]:
        """Matrix c's up-to-k most negative eigenvalues (< 0): indices and values, each (k_c,), k_c <= k."""
        idx, vals = self._signed(k, -1.0, self.values[c : c + 1])
        return idx[0], vals[0]

    def _signed(self, k: int, sign: float, values: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The k largest of ``sign * values`` among those > 0, as (indices, values), sorted by ``sign * value``.

        topk alone returns k entries whatever their sign, which put negative eigenvalues among the "largest
        positive" ones of a class with fewer than k positives (a bug the figures and spectrum.json showed).
        """
        values = self.values if values is None else values
        count = int((sign * values > 0).sum(-1).min()) if values.numel() else 0
        k = min(k, count, values.shape[-1])
        vals, idx = (sign * values).topk(k, dim=-1)
        return idx, sign * vals


def eigendecompose(Q: Tensor, embed: Tensor | None = None) -> Eigen:
    """Eigendecompose symmetric matrices Q (k, d, d), ordered by |lambda| descending, signs canonical.

    ``torch.linalg.eigh`` returns ascending eigenvalues; slicing its output with ``[:k]`` picks the most
    negative ones, a bug in some of the authors' figure scripts (PAPER.md §5). We reorder here once.

    Args:
        embed: (d, n) optional map to input space; if given, the input-space vectors are returned too and
            the sign convention is applied there, where the vectors are looked at.
    """
    require_finite(Q, "interaction matrices")
    values, vecs = torch.linalg.eigh(symmetrize(Q))
    require_finite(values, "eigenvalues")
    order = values.abs().argsort(dim=-1, descending=True)
    values = torch.gather(values, -1, order)
    vectors = torch.gather(vecs, -1, order.unsqueeze(-2).expand_as(vecs)).transpose(-1, -2)  # rows
    input_vectors = None if embed is None else vectors @ embed
    sign = canonical_sign(vectors, input_vectors).unsqueeze(-1)
    vectors = vectors * sign
    if input_vectors is not None:
        input_vectors = input_vectors * sign
    return Eigen(values, vectors, input_vectors)


def decompose_outputs(form: BilinearForm, U: Tensor) -> Eigen:
    """Interaction matrices for output directions U (k, o), eigendecomposed; the usual entry point."""
    return eigendecompose(interaction_matrices(form, U), form.embed)


def eigen_activations(eig: Eigen, z: Tensor, k: int | None = None) -> Tensor:
    """Each eigenvector's contribution ``lambda_i (v_i . z)^2``: z (N, d) -> (N, kmat, k)."""
    e = eig if k is None else eig.top(k)
    proj = torch.einsum("nd,crd->ncr", z.to(e.vectors.dtype), e.vectors)
    return e.values.unsqueeze(0) * proj.square()


def reconstruct(eig: Eigen, z: Tensor, k: int | None = None) -> Tensor:
    """Truncated reconstruction ``sum_{i<=k} lambda_i (v_i . z)^2`` (PAPER.md §1 "Truncation").

    z: (N, d) in the decomposition space (use ``form.to_z``). Returns (N, kmat). ``k=None`` keeps all
    eigenpairs, which reproduces ``u.out`` exactly (claim C1).
    """
    return eigen_activations(eig, z, k).sum(-1)


def effective_rank(z: Tensor, dim: int = -1, eps: float = 1e-30) -> Tensor:
    """The paper's "approximate L0": ``(||z||_1 / ||z||_2)^2``; equals k for k equal non-zeros."""
    return z.abs().sum(dim).square() / (z.square().sum(dim) + eps)


@dataclass
class HOSVD:
    """SVD of the flattened tensor B (o, d*d) = U diag(S) Vh (PAPER.md §1, Appendix D).

    Attributes:
        U: (o, r) class contributions of each direction (columns).
        S: (r,) singular values, descending.
        Q: (r, d, d) the right singular vectors reshaped: symmetric interaction matrices.
    """

    U: Tensor
    S: Tensor
    Q: Tensor

    def reconstruct(self) -> Tensor:
        """B (o, d, d) from the factors."""
        return torch.einsum("or,r,rij->oij", self.U, self.S, self.Q)


def hosvd(B: Tensor) -> HOSVD:
    """HOSVD of a symmetrized output tensor B (o, d, d). Signs: each Q's largest entry positive."""
    o, d, _ = B.shape
    U, S, Vh = torch.linalg.svd(B.reshape(o, d * d), full_matrices=False)
    sign = canonical_sign(U.T)  # orient by class contributions, the part that is read off
    U, Vh = U * sign, Vh * sign.unsqueeze(-1)
    return HOSVD(U, S, Vh.reshape(-1, d, d))


def reexpress(B: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
    """Appendix K: B in a full-rank set of output vectors U (k, o), k >= o.

    Returns (Q, Uinv): Q (k, d, d) with ``Q_k = u_k . B`` and Uinv (o, k) = pinv(U), so that
    ``B = sum_k Uinv[:, k] (x) Q_k``.
    """
    Q = torch.einsum("ko,oij->kij", U.to(B.dtype), B)
    return Q, torch.linalg.pinv(U.to(B.dtype))


def exactness(predicted: Tensor, actual: Tensor) -> dict[str, float]:
    """Max absolute error and error relative to the largest |actual| (claim C1's two numbers).

    NaN anywhere gives NaN errors (``max`` propagates it); callers test ``not rel_error <= tol`` so NaN fails.
    """
    err = (predicted.double() - actual.double()).abs().max().item()
    scale = actual.double().abs().max().item()
    return {"max_abs_error": err, "rel_error": err / max(scale, 1e-30)}


def bias_interactions(form: BilinearForm, Q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split interaction matrices of a homogeneous form into input, bias-interaction and constant parts.

    With x' = [x, 1] and z = E' x', ``z^T Q z = x^T A x + b . x + c`` (PAPER.md §1 "Biases", E5's bias image):
        A = (E'^T Q E')[:n, :n]       (k, n, n) the input-input interactions
        b = 2 (E'^T Q E')[:n, n]      (k, n)    the bias's interaction with each input (the "bias image")
        c = (E'^T Q E')[n, n]         (k,)      the constant
    Q: (k, d, d) in the decomposition space. Never builds more than (k, n, n).
    """
    if not form.homogeneous:
        raise ValueError("bias interactions need a form with biases folded in (homogeneous=True)")
    E = form.embed if form.embed is not None else torch.eye(form.d, dtype=Q.dtype, device=Q.device)
    E = E.to(Q.dtype)
    QE1 = Q @ E[:, -1]  # (k, d): Q applied to the image of the constant coordinate
    A = symmetrize(E[:, :-1].T @ Q @ E[:, :-1])
    return A, 2 * QE1 @ E[:, :-1], (QE1 * E[:, -1]).sum(-1)


def pseudoinverse_keys(vectors: Tensor) -> Tensor:
    """Keys for a stack of vectors (r, n), r <= n: rows K (r, n) with ``K_i . vectors_j = delta_ij``.

    PAPER.md E6: the rows of the pseudoinverse of the matrix whose columns are the vectors. Adding ``s K_i``
    to an input moves the activation ``vectors_i . x`` by s and leaves every other stacked one unchanged.
    """
    return torch.linalg.pinv(vectors.T)


def abs_cosine(A: Tensor, B: Tensor, eps: float = 1e-30) -> Tensor:
    """Sign-invariant similarity of paired vectors: ``|cos(A_i, B_i)|`` over the last dim.

    A, B: (..., n) broadcastable -> (...). Eigenvectors are defined up to sign (PAPER.md §1), so
    comparisons between runs (E4, Fig 5) must not depend on it; |cos| is invariant under v -> -v.
    """
    A, B = torch.broadcast_tensors(A, B.to(A.dtype))
    num = (A * B).sum(-1).abs()
    return num / (A.norm(dim=-1) * B.norm(dim=-1)).clamp_min(eps)


def abs_cosine_matrix(A: Tensor, B: Tensor, eps: float = 1e-30) -> Tensor:
    """All-pairs sign-invariant similarity between two vector sets: A (..., r, n), B (..., s, n) -> (..., r, s)."""
    An = A / A.norm(dim=-1, keepdim=True).clamp_min(eps)
    Bn = B.to(A.dtype) / B.norm(dim=-1, keepdim=True).clamp_min(eps)
    return (An @ Bn.transpose(-1, -2)).abs()
