"""The toy model of E10 (PAPER.md §2, the authors' tutorial): ``head(left(x) * right(x))``, no embedding.

x (N, d_input) -> Bilinear d_input -> d_hidden -> head (d_output, d_hidden). The decomposition space is the
input itself, so each output's interaction matrix is read off directly in terms of the Boolean inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bilinear.decompose import BilinearForm
from bilinear.layers import Bilinear


class BilinearToy(nn.Module):
    def __init__(self, d_input: int = 4, d_hidden: int = 32, d_output: int = 18, bias: bool = False):
        super().__init__()
        self.layer = Bilinear(d_input, d_hidden, bias=bias)
        self.head = nn.Linear(d_hidden, d_output, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """(N, d_input) -> (N, d_output)."""
        return self.head(self.layer(x))

    @torch.no_grad()
    def bilinear_form(self) -> BilinearForm:
        """The weights in input space; biases (if any) folded in through the homogeneous coordinate x' = [x, 1]."""
        W, V, P = self.layer.W, self.layer.V, self.head.weight
        if self.head.bias is None:
            return BilinearForm(W.clone(), V.clone(), P.clone())
        W_h = torch.cat([W, self.layer.b_w[:, None]], dim=1)
        V_h = torch.cat([V, self.layer.b_v[:, None]], dim=1)
        return BilinearForm(W_h, V_h, P.clone(), const=self.head.bias.clone(), homogeneous=True)
