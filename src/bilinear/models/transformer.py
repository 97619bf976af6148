"""The language model of PAPER.md §3 "Models": a small Llama-like transformer with a bilinear MLP.

    tokens (B, T) -> embed (B, T, d) -> n_layer x Block -> RMSNorm -> head (B, T, vocab)      untied head

    Block:  resid_pre  = x                                                  (B, T, d)
            x          = x + attn(norm(x)) / sqrt(2 n_layer)                causal SDPA, RoPE, no biases
            mlp_in     = norm(x)                                            (B, T, d)  RMS-normed, before any gain
            mlp_out    = P g(gain * mlp_in)                                 (B, T, d)  g = bilinear | reglu | swiglu | swish
            resid_post = x + mlp_out                                        (B, T, d)

The four named activation sites of every layer can be read (``cache``) and replaced (``patch``) during the
forward pass, and the pass can stop after a layer (``stop_at_layer``), which is all the SAE work (issue 6)
needs: reading mlp_in/mlp_out to train SAEs, and patching a reconstruction back in for "loss added".
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilinear.decompose import BilinearForm
from bilinear.errors import ConfigError
from bilinear.layers import BilinearMLP, RMSNorm

SITES = ("resid_pre", "mlp_in", "mlp_out", "resid_post")
MLP_GATES = {"bilinear": None, "reglu": "relu", "swiglu": "silu", "swish": "swish"}

Patch = Callable[[Tensor], Tensor]


def site_name(layer: int, site: str) -> str:
    """The name of an activation site, e.g. ``blocks.2.mlp_in`` (TransformerLens-style: says where it is)."""
    return f"blocks.{layer}.{site}"


def rope_tables(n_ctx: int, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos, sin of shape (n_ctx, head_dim / 2) for rotary embeddings with the given base."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(n_ctx, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x_i, x_{i+h/2}) of x (B, H, T, hd) by position-dependent angles (cos, sin: (T, hd/2))."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """Causal multi-head self-attention without biases. x (B, T, d) -> (B, T, d)."""

    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        if d_model % n_head or (d_model // n_head) % 2:
            raise ConfigError(f"model.d_model={d_model} must split into n_head={n_head} heads of even size")
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, d))


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int, d_hidden: int, mlp: str, beta: float, norm_gain: bool,
                 attn_scale: float, norm_eps: float = 1e-6):
        super().__init__()
        self.attn_norm = RMSNorm(d_model, gain=norm_gain, eps=norm_eps)
        self.attn = Attention(d_model, n_head)
        # The MLP's norm is split into normalisation and gain so that mlp_in is the normed input *before*
        # the gain; the gain is then folded into W and V by bilinear_form (PAPER.md §3).
        self.mlp_norm = RMSNorm(d_model, gain=False, eps=norm_eps)
        self.mlp_gain = nn.Parameter(torch.ones(d_model)) if norm_gain else None
        self.mlp = BilinearMLP(d_model, d_hidden, bias=False, gate=MLP_GATES[mlp], beta=beta)
        self.attn_scale = attn_scale

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, hook: Callable[[str, Tensor], Tensor]) -> Tensor:
        x = hook("resid_pre", x)
        x = x + self.attn_scale * self.attn(self.attn_norm(x), cos, sin)
        h = hook("mlp_in", self.mlp_norm(x))
        out = hook("mlp_out", self.mlp(h if self.mlp_gain is None else h * self.mlp_gain))
        return hook("resid_post", x + out)


class Transformer(nn.Module):
    """Decoder-only LM. ``forward(tokens (B, T)) -> logits (B, T, vocab_size)``."""

    def __init__(self, vocab_size: int = 4096, n_ctx: int = 256, d_model: int = 512, n_layer: int = 6,
                 n_head: int = 8, d_hidden: int = 2048, mlp: str = "bilinear", beta: float = 1.0,
                 norm_gain: bool = False, rope_base: float = 10000.0, norm_eps: float = 1e-6):
        super().__init__()
        if mlp not in MLP_GATES:
            raise ConfigError(f"model.mlp must be one of {', '.join(MLP_GATES)}, got {mlp!r}")
        self.vocab_size, self.n_ctx, self.n_layer, self.mlp_kind = vocab_size, n_ctx, n_layer, mlp
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, n_head, d_hidden, mlp, beta, norm_gain, 1.0 / math.sqrt(2 * n_layer), norm_eps)
            for _ in range(n_layer)
        )
        self.final_norm = RMSNorm(d_model, gain=norm_gain, eps=norm_eps)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        cos, sin = rope_tables(n_ctx, d_model // n_head, rope_base)
        # Not persistent: derived from the config, so they stay out of model.safetensors.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, tokens: Tensor, cache: dict[str, Tensor] | None = None, cache_sites=None,
                patch: dict[str, Patch] | None = None, stop_at_layer: int | None = None) -> Tensor | None:
        """Logits (B, T, vocab) for tokens (B, T).

        Args:
            cache: a dict that receives the activations of ``cache_sites`` (names from ``site_name``), detached.
            cache_sites: iterable of site names to store in ``cache`` (default: none).
            patch: ``{site name: fn(act) -> act}``; the returned tensor replaces the activation downstream.
            stop_at_layer: run blocks 0..stop_at_layer only and return None (cheap activation reading).
        """
        T = tokens.shape[1]
        if T > self.n_ctx:
            raise ValueError(f"sequence of {T} tokens is longer than n_ctx={self.n_ctx}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        wanted = set(cache_sites or ())
        patch = patch or {}
        x = self.embed(tokens)
        for i, block in enumerate(self.blocks):
            hook = _identity if not (wanted or patch) else _make_hook(i, wanted, cache, patch)
            x = block(x, cos, sin, hook)
            if stop_at_layer is not None and i >= stop_at_layer:
                return None
        return self.head(self.final_norm(x))

    def run_with_cache(self, tokens: Tensor, sites, **kwargs) -> tuple[Tensor | None, dict[str, Tensor]]:
        """``(logits, {site: activation (B, T, d)})`` for the named sites."""
        cache: dict[str, Tensor] = {}
        logits = self(tokens, cache=cache, cache_sites=sites, **kwargs)
        return logits, cache

    @torch.no_grad()
    def bilinear_form(self, layer: int) -> BilinearForm:
        """Layer ``layer``'s MLP as a quadratic form on mlp_in (PAPER.md §1, §3): mlp_out = P((W z) * (V z)), z = mlp_in.

        W, V: (d_hidden, d_model) with the norm gain folded in (W diag(g)); P: (d_model, d_hidden).
        """
        if not 0 <= layer < self.n_layer:
            raise ConfigError(f"layer must be in 0..{self.n_layer - 1}, got {layer}")
        block = self.blocks[layer]
        bil = block.mlp.bilinear
        if not bil.is_bilinear:
            raise ConfigError(f"layer {layer} has a {self.mlp_kind} MLP, which is not a quadratic form; only bilinear "
                              "(or swish at beta=0) MLPs decompose exactly")
        W, V = bil.W.clone(), bil.V.clone()
        if bil.gate == "swish":  # beta = 0: Swish_0(a) = a / 2
            W = W / 2
        if block.mlp_gain is not None:
            W, V = W * block.mlp_gain, V * block.mlp_gain
        return BilinearForm(W, V, block.mlp.W_out.weight.clone())

    def n_params(self, non_embedding: bool = True) -> int:
        """Parameter count; ``non_embedding`` leaves out the input embedding (a lookup, no FLOPs)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if non_embedding else n

    def flops_per_token(self, T: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6 N for the matmuls plus 12 L T d for attention."""
        T = T or self.n_ctx
        d = self.embed.weight.shape[1]
        return 6 * self.n_params(non_embedding=True) + 6 * self.n_layer * T * d  # causal: half of 12 L T d


def _identity(name: str, x: Tensor) -> Tensor:
    return x


def _make_hook(layer: int, wanted: set[str], cache: dict | None, patch: dict[str, Patch]):
    def hook(site: str, x: Tensor) -> Tensor:
        name = site_name(layer, site)
        if name in patch:
            x = patch[name](x)
        if name in wanted and cache is not None:
            cache[name] = x.detach()
        return x

    return hook


@torch.no_grad()
def generate(model: Transformer, prompt: Tensor, max_new_tokens: int, temperature: float = 0.8, top_k: int | None = 40,
             generator: torch.Generator | None = None, stop_token: int | None = None) -> Tensor:
    """Sample a continuation of ``prompt`` (T,) token ids; returns (T + n,) ids, n <= max_new_tokens.

    The context is cropped to the last n_ctx tokens; sampling stops early at ``stop_token``.
    """
    ids = prompt.clone()
    for _ in range(max_new_tokens):
        logits = model(ids[-model.n_ctx :][None])[0, -1].float()
        if temperature <= 0:
            nxt = logits.argmax()
        else:
            logits = logits / temperature
            if top_k:
                kth = logits.topk(min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)[0]
        ids = torch.cat([ids, nxt.view(1)])
        if stop_token is not None and int(nxt) == stop_token:
            break
    return ids
