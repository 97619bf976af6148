"""SAE runs opened beside their LM for the Section 5 analyses (PAPER.md E11-E13, issue 6).

``python -m analyze ckpt=<lm run> saes=[<sae run>,...]`` gives the LM's RunContext a list of :class:`SAERun`.
Each is checked against the LM before any analysis: same d_model, and (through lm.json) trained on these
very weights, so a dictionary is never read on a model it was not fitted to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor

from bilinear import checkpoint
from bilinear.errors import CheckpointError, ConfigError
from bilinear.models import load_run_model
from bilinear.models.transformer import site_name
from bilinear.tasks.sae import LM_REF


@dataclass
class SAERun:
    dir: Path
    cfg: DictConfig
    model: torch.nn.Module  # TopKSAE
    layer: int
    site: str  # mlp_in | mlp_out

    @property
    def name(self) -> str:
        return f"L{self.layer}.{self.site}"

    @property
    def metrics(self) -> dict:
        path = self.dir / checkpoint.METRICS
        return checkpoint.read_json(path) if path.exists() else {}


def open_sae(sae_dir: str | Path, device: torch.device) -> SAERun:
    sae_dir = Path(sae_dir)
    cfg = checkpoint.load_config(sae_dir)
    if cfg.task.get("kind") != "sae":
        raise CheckpointError(f"{sae_dir}: not an SAE run (task kind {cfg.task.get('kind')!r}); saes=[...] takes task=sae runs")
    model = load_run_model(sae_dir, cfg, device)
    for p in model.parameters():
        p.requires_grad_(False)  # analyses only read the dictionary
    return SAERun(sae_dir, cfg, model, int(cfg.sae.layer), str(cfg.sae.site))


def check_against_lm(sae: SAERun, lm_dir: Path, lm_model: torch.nn.Module, lm_weights_sha256: str) -> None:
    """CheckpointError unless the SAE was trained on this LM: matching d_model, layer in range, same weights."""
    d_lm = lm_model.embed.weight.shape[1]
    if sae.model.d_model != d_lm:
        raise CheckpointError(f"{sae.dir}: SAE d_model={sae.model.d_model} does not match the LM's d_model={d_lm} ({lm_dir})")
    if not 0 <= sae.layer < lm_model.n_layer:
        raise CheckpointError(f"{sae.dir}: SAE layer {sae.layer} is not a layer of {lm_dir} ({lm_model.n_layer} layers)")
    ref_path = sae.dir / LM_REF
    if not ref_path.exists():
        raise CheckpointError(f"{sae.dir}: no lm.json saying which LM the SAE was trained on")
    ref = checkpoint.read_json(ref_path)
    if ref.get("weights_sha256") != lm_weights_sha256:
        raise CheckpointError(f"{sae.dir}: SAE was trained on the LM at {ref.get('path')}, whose weights differ from {lm_dir}'s")


def open_saes(paths, lm_dir: Path, lm_model: torch.nn.Module, lm_weights_sha256: str,
              device: torch.device) -> list[SAERun]:
    saes = [open_sae(p, device) for p in paths or []]
    for s in saes:
        check_against_lm(s, lm_dir, lm_model, lm_weights_sha256)
    return saes


def sae_pair(saes: list[SAERun], need_input: bool = True) -> tuple[SAERun | None, SAERun]:
    """(input SAE, output SAE) of one layer: the mlp_in and mlp_out SAEs among ``saes``.

    With several layers given, the layer with both sites is used; ambiguity is a ConfigError.
    """
    by_layer: dict[int, dict[str, SAERun]] = {}
    for s in saes:
        by_layer.setdefault(s.layer, {})[s.site] = s
    wanted = {"mlp_in", "mlp_out"} if need_input else {"mlp_out"}
    layers = [l for l, sites in by_layer.items() if wanted <= set(sites)]
    if len(layers) != 1:
        what = "an mlp_in and an mlp_out SAE of the same layer" if need_input else "an mlp_out SAE"
        raise ConfigError(f"config: this analysis needs {what} in saes=[...] (exactly one layer); got "
                          f"{[s.name for s in saes] or 'none'}")
    sites = by_layer[layers[0]]
    return sites.get("mlp_in"), sites["mlp_out"]


@dataclass
class LayerActivations:
    """Held-out activations of one layer: tokens (S, T), mlp_in and mlp_out (S, T, d) float32."""

    tokens: Tensor
    mlp_in: Tensor
    mlp_out: Tensor


@torch.no_grad()
def layer_activations(model, tokens: Tensor, layer: int, batch: int = 32) -> LayerActivations:
    sites = [site_name(layer, "mlp_in"), site_name(layer, "mlp_out")]
    ins, outs = [], []
    for i in range(0, tokens.shape[0], batch):
        _, cache = model.run_with_cache(tokens[i : i + batch], sites, stop_at_layer=layer)
        ins.append(cache[sites[0]].float())
        outs.append(cache[sites[1]].float())
    return LayerActivations(tokens, torch.cat(ins), torch.cat(outs))


def decode_tokens(tokenizer, ids) -> list[str]:
    """Readable token strings (the tokenizer's word-start marker becomes a space)."""
    out = []
    for i in ids:
        t = tokenizer.id_to_token(int(i))  # None for ids past the tokenizer (the model's vocab may be padded)
        out.append(f"<unused {int(i)}>" if t is None else t.replace("▁", " "))
    return out


def context_string(tokenizer, tokens: Tensor, s: int, t: int, before: int = 6) -> str:
    """The text of tokens[s, t-before .. t] with the token at t in [brackets]."""
    ids = tokens[s, max(0, t - before) : t + 1].tolist()
    words = decode_tokens(tokenizer, ids)
    words[-1] = "[" + words[-1].strip() + "]"
    return "".join(words).strip()


def top_contexts(tokenizer, tokens: Tensor, acts: Tensor, n: int = 5, before: int = 6) -> list[str]:
    """Contexts of the ``n`` largest values of acts (S, T) for one latent."""
    flat = acts.flatten()
    idx = flat.topk(min(n, int((flat > 0).sum()))).indices if (flat > 0).any() else []
    T = acts.shape[1]
    return [context_string(tokenizer, tokens, int(i) // T, int(i) % T, before) for i in idx]


def require_saes(ctx) -> list[SAERun]:
    if not ctx.saes:
        raise ConfigError("config: this analysis reads SAEs: python -m analyze ckpt=<lm run> saes=[<mlp_in SAE run>,"
                          "<mlp_out SAE run>] analyses=[...]")
    return ctx.saes
