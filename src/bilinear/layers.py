"""The bilinear layer and its gated relatives: the only definition of the layer in the suite.

PAPER.md §1 "The layer": ``g(x) = (W x) * (V x)``. A GLU puts a nonlinearity on ``W x``; with
``gate="relu"`` or ``gate="silu"`` the same module is ReGLU or SwiGLU (the E14 baselines), and with
``gate="swish"`` it is ``Swish_beta(W x) * (V x)`` where ``Swish_beta(z) = z sigmoid(beta z)``; annealing
beta to 0 turns it into ``(W x)/2 * (V x)``, a bilinear layer (E15).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GATES = (None, "relu", "silu", "swish")


class Bilinear(nn.Module):
    """``g(x) = act(W x + b_w) * (V x + b_v)``, with ``act`` the identity for a bilinear layer.

    Shapes: x (..., d_in) -> g (..., d_hidden). W, V: (d_hidden, d_in). Biases (d_hidden,) if ``bias``.
    W and V are stored stacked in one matrix so the two projections are one matmul.
    """

    def __init__(self, d_in: int, d_hidden: int, bias: bool = False, gate: str | None = None, beta: float = 1.0):
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        self.d_in, self.d_hidden, self.gate = d_in, d_hidden, gate
        self.proj = nn.Linear(d_in, 2 * d_hidden, bias=bias)
        # beta is a buffer, not a parameter: E15 anneals it on a schedule, the optimizer never touches it.
        self.register_buffer("beta", torch.tensor(float(beta)), persistent=gate == "swish")

    @property
    def W(self) -> torch.Tensor:
        """(d_hidden, d_in): the gated ("left") projection."""
        return self.proj.weight[: self.d_hidden]

    @property
    def V(self) -> torch.Tensor:
        """(d_hidden, d_in): the linear ("right") projection."""
        return self.proj.weight[self.d_hidden :]

    @property
    def b_w(self) -> torch.Tensor | None:
        return None if self.proj.bias is None else self.proj.bias[: self.d_hidden]

    @property
    def b_v(self) -> torch.Tensor | None:
        return None if self.proj.bias is None else self.proj.bias[self.d_hidden :]

    @property
    def is_bilinear(self) -> bool:
        """True when the layer is exactly a quadratic form (no gate, or swish at beta = 0)."""
        return self.gate is None or (self.gate == "swish" and float(self.beta) == 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = self.proj(x).chunk(2, dim=-1)
        if self.gate == "relu":
            left = F.relu(left)
        elif self.gate == "silu":
            left = F.silu(left)
        elif self.gate == "swish":
            left = left * torch.sigmoid(self.beta * left)
        return left * right

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_hidden={self.d_hidden}, bias={self.proj.bias is not None}, gate={self.gate}"


class BilinearMLP(nn.Module):
    """``out = P g(x)``: the transformer MLP block. x (..., d_model) -> (..., d_model)."""

    def __init__(self, d_model: int, d_hidden: int, bias: bool = False, gate: str | None = None, beta: float = 1.0):
        super().__init__()
        self.bilinear = Bilinear(d_model, d_hidden, bias=bias, gate=gate, beta=beta)
        self.W_out = nn.Linear(d_hidden, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.W_out(self.bilinear(x))


class RMSNorm(nn.Module):
    """``x / rms(x)`` with an optional learnable gain (the paper's models have none). x: (..., d)."""

    def __init__(self, d: int, gain: bool = False, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d)) if gain else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x if self.weight is None else x * self.weight
