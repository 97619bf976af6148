"""Output-feature interaction matrices of a bilinear MLP read through SAEs (PAPER.md E11, E12).

For an output SAE feature a with encoder row e_a (d,), the MLP's contribution to its pre-activation is
``e_a . MLP(x) = x^T Q_a x`` with ``Q_a = sym(W^T diag(P^T e_a) V)`` (d, d) on the mlp_in space.

    feature_eigen          Q_a for many features, built and eigendecomposed in chunks: the (m, d, d) stack and
                           the (d_out, d, d) tensor never exist; only the kept eigenpairs are returned (E12).
    sae_basis_matrices     Q~_a = sym(D_in^T Q_a D_in) (m, n_in, n_in): Q_a in the input SAE's decoder basis (E11).
                           Self-interactions are its diagonal, the cross-interaction of b and c is 2 Q~_bc.
    sae_basis_eigen        all non-zero eigenpairs of Q~_a from a d x d problem: with G = D D^T,
                           D^T Q D and G^{1/2} Q G^{1/2} share their non-zero eigenvalues, and an eigenvector y
                           of the latter maps to the unit eigenvector D^T G^{-1/2} y of the former.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bilinear.decompose import BilinearForm, Eigen, eigendecompose, interaction_matrices, symmetrize


def feature_eigen(form: BilinearForm, rows: Tensor, keep: int | None = None, chunk: int = 32) -> Eigen:
    """Eigenpairs of Q_a for each output direction in ``rows`` (m, d_out), by |lambda| descending.

    All d eigenpairs of every matrix are computed; ``keep`` limits how many are returned (memory:
    m * keep * d instead of m * d * d). Peak extra memory is one chunk of (chunk, d, d) matrices.
    Returns Eigen with values (m, keep) and vectors (m, keep, d) in the mlp_in space.
    """
    keep = form.d if keep is None else min(int(keep), form.d)
    values, vectors = [], []
    for start in range(0, rows.shape[0], chunk):
        eig = eigendecompose(interaction_matrices(form, rows[start : start + chunk], chunk=chunk)).top(keep)
        # copies, not views: a view of the top-k would keep each chunk's full (chunk, d, d) storage alive
        values.append(eig.values.clone())
        vectors.append(eig.vectors.clone())
    return Eigen(torch.cat(values), torch.cat(vectors))


def sae_basis_matrices(Q: Tensor, D_in: Tensor) -> Tensor:
    """Q~ = sym(D_in^T Q D_in): Q (m, d, d), D_in (d, n_in) decoder columns -> (m, n_in, n_in)."""
    D = D_in.to(Q.dtype)
    return symmetrize(D.T @ Q @ D)


def cross_interactions(Qt: Tensor) -> tuple[Tensor, Tensor]:
    """(self (m, n), cross (m, n(n-1)/2)): the diagonal of Q~ and 2 Q~_bc for b < c."""
    n = Qt.shape[-1]
    iu = torch.triu_indices(n, n, offset=1, device=Qt.device)
    return Qt.diagonal(dim1=-2, dim2=-1), 2 * Qt[..., iu[0], iu[1]]


@dataclass
class BasisMap:
    """G^{+1/2} and G^{-1/2} of G = D D^T (d, d) for an SAE decoder D (d, n), n >= d, G full rank."""

    D: Tensor
    G_half: Tensor
    G_inv_half: Tensor

    @classmethod
    def of(cls, D: Tensor) -> "BasisMap":
        vals, vecs = torch.linalg.eigh(symmetrize(D @ D.T))
        if vals.min() <= vals.max() * 1e-10:
            raise ValueError("the SAE decoder does not span the model space (D D^T is singular)")
        return cls(D, (vecs * vals.sqrt()) @ vecs.T, (vecs * vals.rsqrt()) @ vecs.T)


def _similar(Q: Tensor, basis: BasisMap) -> Tensor:
    """G^{1/2} Q G^{1/2} (m, d, d): shares the non-zero eigenvalues of D^T Q D."""
    Gh = basis.G_half.to(Q.dtype)
    return Gh @ Q @ Gh


def sae_basis_eigvals(Q: Tensor, basis: BasisMap) -> Tensor:
    """The d eigenvalues (ascending) of Q~ = D^T Q D that can be non-zero, (m, d), without forming Q~."""
    return torch.linalg.eigvalsh(_similar(Q, basis))


def sae_basis_eigen(Q: Tensor, basis: BasisMap, keep: int | None = None) -> Eigen:
    """Non-zero eigenpairs of Q~ = D^T Q D (m, n, n) without forming it: values (m, k), vectors (m, k, n) unit rows.

    Exact: D^T Q D w = lambda w with w = D^T G^{-1/2} y whenever G^{1/2} Q G^{1/2} y = lambda y (see module doc).
    """
    eig = eigendecompose(_similar(Q, basis))
    if keep is not None:
        eig = eig.top(keep)
    w = eig.vectors @ basis.G_inv_half.to(Q.dtype) @ basis.D.to(Q.dtype)  # rows y^T G^{-1/2} D = (D^T G^{-1/2} y)^T
    return Eigen(eig.values, w)


def pearson(a: Tensor, b: Tensor, dim: int = 0, eps: float = 1e-30) -> Tensor:
    """Pearson correlation along ``dim`` (NaN-free: 0 where either side is constant)."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim)).clamp_min(eps)
