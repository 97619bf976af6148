"""PAPER.md §3 "SAEs" (Appendix G.3): the TopK sparse autoencoder read on an LM's mlp_in or mlp_out.

    encode   z = ReLU(TopK(W_enc (x - b_dec)))      x (..., d_model) -> z (..., n_latents), k non-zeros at most
    decode   x^ = W_dec z + b_dec                   z (..., n_latents) -> (..., d_model)

W_dec's columns have unit norm (renormalised after every optimizer step by ``normalize_decoder``), W_enc
starts as W_dec's transpose, and there is no encoder bias. TopK keeps the k largest pre-activations; the
ReLU then drops any of them that are negative, so an active latent always has a positive activation
and "active" means ``z > 0`` everywhere in the suite.

State-dict names (what SAE run directories hold): ``W_enc`` (n_latents, d_model), ``W_dec``
(d_model, n_latents), ``b_dec`` (d_model,).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bilinear.errors import ConfigError


class TopKSAE(nn.Module):
    def __init__(self, d_model: int, expansion: int = 4, k: int = 30, n_latents: int | None = None):
        super().__init__()
        n = int(n_latents or d_model * expansion)
        if d_model < 1 or n < 1 or not 1 <= k <= n:
            raise ConfigError(f"config: an SAE needs d_model >= 1 and 1 <= k <= n_latents, got d_model={d_model}, "
                              f"n_latents={n}, k={k}")
        self.d_model, self.n_latents, self.k = int(d_model), n, int(k)
        W_dec = torch.randn(d_model, n)
        W_dec /= W_dec.norm(dim=0, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone())  # tied at initialisation, trained separately
        self.b_dec = nn.Parameter(torch.zeros(d_model))

    def pre_acts(self, x: Tensor) -> Tensor:
        """``W_enc (x - b_dec)``: x (..., d_model) -> (..., n_latents)."""
        return (x - self.b_dec) @ self.W_enc.T

    def encode(self, x: Tensor) -> Tensor:
        """Dense latent activations (..., n_latents), at most k non-zero per position, all >= 0."""
        pre = self.pre_acts(x)
        vals, idx = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())

    def decode(self, z: Tensor) -> Tensor:
        """(..., n_latents) -> (..., d_model)."""
        return z @ self.W_dec.T + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Project W_dec's columns back onto the unit sphere (after each optimizer step)."""
        self.W_dec /= self.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-12)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_latents={self.n_latents}, k={self.k}"
