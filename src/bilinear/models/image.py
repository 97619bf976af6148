"""The image classifier of PAPER.md §2 "Shared image setup": ``head(bilinear(E x))``.

x (N, n_in) -> embed E (d_hidden, n_in) -> [Bilinear d_hidden -> d_hidden] x n_layers -> head (n_classes, d_hidden).
No biases and no residual by default, as in the paper; both are options (E5 uses biases).
E7's model-side regularizers (``hidden_noise``: absolute Gaussian std, ``dropout``: drop probability) act on
the embedding's output, the input of the bilinear layer, in training mode only; both default to off.
They draw from the ``generator`` passed to ``forward`` (the training step's), so a resumed run is exact.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bilinear.decompose import BilinearForm
from bilinear.errors import ConfigError
from bilinear.layers import Bilinear


class ImageClassifier(nn.Module):
    def __init__(
        self,
        d_input: int = 784,
        d_hidden: int = 512,
        n_classes: int = 10,
        n_layers: int = 1,
        bias: bool = False,
        residual: bool = False,
        gate: str | None = None,
        hidden_noise: float = 0.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if n_layers < 1:
            raise ConfigError(f"model.n_layers must be >= 1, got {n_layers}")
        if hidden_noise < 0 or not 0 <= dropout < 1:
            raise ConfigError(f"model.hidden_noise must be >= 0 and model.dropout in [0, 1), got {hidden_noise}, {dropout}")
        self.residual = residual
        self.hidden_noise, self.dropout = hidden_noise, dropout
        self.embed = nn.Linear(d_input, d_hidden, bias=bias)
        self.layers = nn.ModuleList(Bilinear(d_hidden, d_hidden, bias=bias, gate=gate) for _ in range(n_layers))
        self.head = nn.Linear(d_hidden, n_classes, bias=bias)

    def regularize(self, h: Tensor, generator: torch.Generator | None) -> Tensor:
        """Hidden noise and inverted dropout on h (N, d_hidden) while training; the identity in eval mode."""
        if not self.training:
            return h
        if self.hidden_noise > 0:
            h = h + self.hidden_noise * torch.randn(h.shape, generator=generator, device=h.device, dtype=h.dtype)
        if self.dropout > 0:
            keep = torch.rand(h.shape, generator=generator, device=h.device) >= self.dropout
            h = h * keep / (1 - self.dropout)
        return h

    def hidden(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(N, n_in) -> (N, d_hidden): the activations that feed the head."""
        h = self.regularize(self.embed(x), generator)
        for layer in self.layers:
            h = h + layer(h) if self.residual else layer(h)
        return h

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(N, n_in) -> logits (N, n_classes). ``generator`` feeds the training-only regularizers."""
        return self.head(self.hidden(x, generator))

    @torch.no_grad()
    def bilinear_form(self) -> BilinearForm:
        """The weights in the decomposition space (the embedding's output), biases folded in (PAPER.md §1).

        With biases, x' = [x, 1] and E' = [[E, b_e], [0, 1]] carries the constant into the hidden space, so
        W' = [W, b_w], V' = [V, b_v], and the head's bias sits on the constant coordinate.
        """
        if len(self.layers) != 1 or self.residual:
            raise ConfigError("the exact decomposition needs model.n_layers=1 and model.residual=false")
        layer = self.layers[0]
        if not layer.is_bilinear:
            raise ConfigError(f"a gated layer (gate={layer.gate}) is not a quadratic form and cannot be decomposed")
        E, W, V, P = self.embed.weight, layer.W, layer.V, self.head.weight
        if self.embed.bias is None:
            return BilinearForm(W.clone(), V.clone(), P.clone(), embed=E.clone())
        d, n = E.shape
        E_h = torch.zeros(d + 1, n + 1, dtype=E.dtype, device=E.device)
        E_h[:d, :n], E_h[:d, n], E_h[d, n] = E, self.embed.bias, 1.0
        W_h = torch.cat([W, layer.b_w[:, None]], dim=1)
        V_h = torch.cat([V, layer.b_v[:, None]], dim=1)
        return BilinearForm(W_h, V_h, P.clone(), embed=E_h, const=self.head.bias.clone(), homogeneous=True)
