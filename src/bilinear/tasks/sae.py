"""``task=sae``: a TopK SAE on one activation site of a finished LM run (PAPER.md §3 "SAEs", issue 6).

The LM is frozen. Its activations stream through :class:`ActivationBuffer`: each refill runs the LM on
fresh random windows of the train split, shuffles the positions, and serves them as batches, so only
one buffer of activations is ever in memory. Refill r draws from a generator seeded by (seed, r), which
makes a batch a pure function of (seed, step): resume is exact, as for every other task.

Final metrics (on held-out windows of the validation split):
    nmse             sum ||x - x^||^2 / sum ||x - mean x||^2
    loss_added       (L_patched - L_clean) / L_clean, the reconstruction patched into the LM (PAPER.md §3)
    loss_recovered   (L_zero - L_patched) / (L_zero - L_clean), L_zero with the site zero-ablated
    dead_fraction    latents never active on the held-out activations
The run directory records its LM in lm.json (path and weights hash), so analyses refuse a mismatched pair.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from bilinear import checkpoint
from bilinear.errors import CheckpointError, ConfigError
from bilinear.models import load_run_model
from bilinear.models.registry import build_model
from bilinear.models.transformer import site_name
from bilinear.tasks.lm import load_run_tokens, windows

SAE_SITES = ("mlp_in", "mlp_out")
LM_REF = "lm.json"


def open_lm_run(lm_dir: str | Path | None, data_root: str | None, device: torch.device):
    """(LM run dir, its config, its model) for an SAE; clear errors when it is not a finished LM run."""
    if not lm_dir:
        raise ConfigError("config: task=sae needs lm=<LM run directory>")
    lm_dir = Path(lm_dir)
    lm_cfg = checkpoint.load_config(lm_dir)
    if lm_cfg.task.get("kind") != "lm":
        raise ConfigError(f"config: lm={lm_dir} is a {lm_cfg.task.get('kind')} run, not a language model")
    if not checkpoint.is_complete(lm_dir):
        raise CheckpointError(f"{lm_dir}: the LM run has not finished")
    if data_root:
        OmegaConf.update(lm_cfg, "data.root", data_root, force_add=True)
    model = load_run_model(lm_dir, lm_cfg, device)
    for p in model.parameters():
        p.requires_grad_(False)
    return lm_dir, lm_cfg, model


class ActivationSource:
    """One site of a frozen LM read on token windows: ``(starts,) -> (N, d_model)`` float32 activations."""

    def __init__(self, lm: nn.Module, tokens: np.ndarray, layer: int, site: str, skip_first: bool, lm_batch: int,
                 device: torch.device):
        self.lm, self.tokens, self.device = lm, tokens, device
        self.name, self.layer = site_name(layer, site), layer
        self.n_ctx, self.skip = lm.n_ctx, int(bool(skip_first))
        self.lm_batch = max(1, int(lm_batch))

    @property
    def per_window(self) -> int:
        return self.n_ctx - self.skip

    @torch.no_grad()
    def __call__(self, starts: np.ndarray) -> Tensor:
        out = []
        for i in range(0, len(starts), self.lm_batch):
            seq = windows(self.tokens, starts[i : i + self.lm_batch], self.n_ctx).to(self.device)
            _, cache = self.lm.run_with_cache(seq, [self.name], stop_at_layer=self.layer)
            out.append(cache[self.name][:, self.skip :].flatten(0, 1).float())
        return torch.cat(out)

    def random_starts(self, n_tokens: int, generator: torch.Generator) -> np.ndarray:
        high = len(self.tokens) - self.n_ctx
        n = math.ceil(n_tokens / self.per_window)
        return torch.randint(0, high + 1, (n,), generator=generator).numpy()

    def consecutive_starts(self, n_tokens: int) -> np.ndarray:
        """Non-overlapping windows from the start of the split (the fixed held-out set)."""
        n = max(1, min(math.ceil(n_tokens / self.per_window), (len(self.tokens) - 1) // self.n_ctx))
        return np.arange(n) * self.n_ctx


class ActivationBuffer:
    """Shuffled activations served in batches; refill r is drawn from a generator seeded by (seed, r)."""

    def __init__(self, source: ActivationSource, buffer_tokens: int, batch_size: int, seed: int):
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.batches_per_fill = max(1, buffer_tokens // batch_size)
        self.fill_index, self.acts = -1, None

    def _refill(self, r: int) -> None:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919 * r + 17)
        need = self.batches_per_fill * self.batch_size
        acts = self.source(self.source.random_starts(need, gen))
        perm = torch.randperm(acts.shape[0], generator=gen)[:need].to(acts.device)
        self.acts, self.fill_index = acts[perm], r

    def batch(self, step: int) -> Tensor:
        """(batch_size, d_model) activations for optimizer step ``step``."""
        r, j = divmod(step, self.batches_per_fill)
        if r != self.fill_index:
            self._refill(r)
        return self.acts[j * self.batch_size : (j + 1) * self.batch_size]


def nmse(x: Tensor, x_hat: Tensor) -> float:
    """Normalized MSE: squared error over the activations' total variance about their mean."""
    return float((x - x_hat).square().sum() / (x - x.mean(0)).square().sum().clamp_min(1e-30))


class SAETask:
    """Train a TopK SAE on ``sae.site`` of layer ``sae.layer`` of the LM run ``lm``."""

    def __init__(self, cfg: DictConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.lm_dir, self.lm_cfg, self.lm = open_lm_run(cfg.get("lm"), cfg.data.get("root"), device)
        n_layer, d_model = int(self.lm_cfg.model.n_layer), int(self.lm_cfg.model.d_model)
        layer = cfg.sae.layer if cfg.sae.layer is not None else n_layer // 2
        if not 0 <= int(layer) < n_layer:
            raise ConfigError(f"config: sae.layer must be in 0..{n_layer - 1} for {self.lm_dir}, got {layer}")
        if cfg.sae.site not in SAE_SITES:
            raise ConfigError(f"config: sae.site must be one of {', '.join(SAE_SITES)}, got {cfg.sae.site!r}")
        if cfg.model.d_model is not None and int(cfg.model.d_model) != d_model:
            raise ConfigError(f"config: model.d_model={cfg.model.d_model} does not match the LM's d_model={d_model} "
                              f"({self.lm_dir})")
        # resolved values go into the saved config, so the SAE run builds its model without the LM
        OmegaConf.update(cfg, "sae.layer", int(layer))
        OmegaConf.update(cfg, "model.d_model", d_model)
        OmegaConf.update(cfg, "lm", str(self.lm_dir.resolve()))
        self.layer, self.site = int(layer), str(cfg.sae.site)
        torch.manual_seed(cfg.seed)
        self.model: nn.Module = build_model(cfg.model).to(device)

        t, d = cfg.train, cfg.data
        if t.batch_size < 1 or t.tokens < 1:
            raise ConfigError(f"config: train.batch_size and train.tokens must be >= 1, got {t.batch_size}, {t.tokens}")
        self.data = load_run_tokens(self.lm_dir, self.lm_cfg, may_build=True)  # the data root is this command's own
        make = lambda split: ActivationSource(self.lm, split, self.layer, self.site, d.skip_first, d.lm_batch, device)  # noqa: E731
        self.train_source, self.val_source = make(self.data.train), make(self.data.val)
        self.buffer = ActivationBuffer(self.train_source, int(d.buffer_tokens), int(t.batch_size), int(cfg.seed))
        self.batch_size = int(t.batch_size)
        self.total_steps = math.ceil(t.tokens / self.batch_size)
        self.steps_per_epoch = max(1, len(self.data.train) // self.batch_size)
        self.eval_every_steps = max(1, int(t.eval_every))
        self._eval_acts: Tensor | None = None

    # --- the Task protocol ---------------------------------------------------------------------------
    def train_batch(self, step: int, generator: torch.Generator) -> Tensor:
        return self.buffer.batch(step)

    def loss(self, model: nn.Module, batch: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        z = model.encode(batch)
        x_hat = model.decode(z)
        loss = F.mse_loss(x_hat, batch)
        with torch.no_grad():
            stats = {"nmse": nmse(batch, x_hat), "l0": float((z > 0).sum(-1).float().mean())}
        return loss, stats

    def after_step(self, step: int) -> None:
        self.model.normalize_decoder()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if self._eval_acts is None:
            self._eval_acts = self.val_source(self.val_source.consecutive_starts(int(self.cfg.train.eval_tokens)))
        x = self._eval_acts
        return {"val_nmse": nmse(x, model(x))}

    @torch.no_grad()
    def final_metrics(self, model: nn.Module) -> dict[str, Any]:
        model.eval()
        starts = self.val_source.consecutive_starts(int(self.cfg.train.final_eval_tokens))
        x = self.val_source(starts)
        z = model.encode(x)
        fired = (z > 0).sum(0)
        out: dict[str, Any] = {
            "nmse": nmse(x, model.decode(z)), "l0": float((z > 0).sum(-1).float().mean()),
            "dead_fraction": float((fired == 0).float().mean()), "n_latents": int(z.shape[1]),
            "n_eval_positions": int(x.shape[0]), "layer": self.layer, "site": self.site, "lm": str(self.lm_dir.resolve()),
        }
        out.update(patched_losses(self.lm, model, self.data.val, starts, self.layer, self.site,
                                  skip_first=bool(self.cfg.data.skip_first), batch_size=int(self.cfg.data.lm_batch),
                                  device=self.device))
        out["tokens"] = self.total_steps * self.batch_size
        return out

    def save_artifacts(self, run_dir) -> None:
        checkpoint.write_json(Path(run_dir) / LM_REF, {
            "path": str(self.lm_dir.resolve()),
            "weights_sha256": checkpoint.file_sha256(self.lm_dir / checkpoint.WEIGHTS)})


@torch.no_grad()
def patched_losses(lm: nn.Module, sae: nn.Module, tokens: np.ndarray, starts: np.ndarray, layer: int, site: str,
                   skip_first: bool, batch_size: int, device: torch.device) -> dict[str, float]:
    """Next-token loss of the LM clean, with the SAE's reconstruction patched in, and with the site zeroed.

    Positions the SAE never saw in training (the first, with ``skip_first``) keep their clean activation.
    Returns loss_clean, loss_patched, loss_zero_ablated, loss_added and loss_recovered (PAPER.md §3).
    """
    s = int(skip_first)

    def replace(fn):
        def patch(a: Tensor) -> Tensor:
            a = a.clone()
            a[:, s:] = fn(a[:, s:])
            return a

        return patch

    variants = {"clean": None, "patched": replace(lambda a: sae(a.float()).to(a.dtype)),
                "zero_ablated": replace(torch.zeros_like)}
    totals = dict.fromkeys(variants, 0.0)
    count = 0
    name = site_name(layer, site)
    for i in range(0, len(starts), batch_size):
        seq = windows(tokens, starts[i : i + batch_size], lm.n_ctx + 1).to(device)
        for key, fn in variants.items():
            logits = lm(seq[:, :-1], patch=None if fn is None else {name: fn})
            totals[key] += F.cross_entropy(logits.float().flatten(0, 1), seq[:, 1:].flatten(), reduction="sum").item()
        count += seq[:, 1:].numel()
    L = {k: v / count for k, v in totals.items()}
    denom = L["zero_ablated"] - L["clean"]
    return {"loss_clean": L["clean"], "loss_patched": L["patched"], "loss_zero_ablated": L["zero_ablated"],
            "loss_added": (L["patched"] - L["clean"]) / L["clean"],
            "loss_recovered": (L["zero_ablated"] - L["patched"]) / denom if abs(denom) > 1e-12 else float("nan")}
