"""Language modelling (PAPER.md §3, E14): next-token prediction on a tokenized corpus, with a token budget.

Batches are random windows of ``n_ctx + 1`` tokens from the memory-mapped train split, drawn from the
step's generator, so a batch is a pure function of (seed, step) and resume is exact. The held-out loss is
computed on fixed windows of the validation split. On ``stories`` the final metrics add the planted-rule
evaluation: the accuracy of the outcome verb's polarity, per cell (adjective polarity x negated).

E15: ``train.init_from`` starts a run from a finished LM run's weights, and ``train.beta_anneal_fraction``
anneals a swish MLP's beta to 0 (a bilinear MLP) over the first part of the steps.
"""

from __future__ import annotations

import contextlib
import copy
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from bilinear import checkpoint
from bilinear.dataio import stories as story_rule
from bilinear.dataio.text_sources import build_source
from bilinear.dataio.tokenizer import EOT, TOKENIZER_FILE, load_tokenizer, tokenizer_sha256, word_id
from bilinear.dataio.tokens import TokenData, load_or_build
from bilinear.errors import CheckpointError, ConfigError, DataError
from bilinear.layers import Bilinear
from bilinear.models.registry import build_model


def load_tokens(cfg: DictConfig, log=print, may_build: bool = True) -> TokenData:
    """The run's token cache (built on first use unless ``may_build`` is False), from the ``data`` section of a
    training config."""
    d = cfg.data
    return load_or_build(build_source(d), d.root, int(d.vocab_size), tokenizer_path=d.get("tokenizer"),
                         max_tokens=d.get("max_tokens"), tokenizer_chars=int(d.get("tokenizer_chars") or 50_000_000),
                         verify=bool(d.get("verify", True)), log=log, may_build=may_build)


def load_run_tokens(run_dir, run_cfg: DictConfig, tokenizer=None, may_build: bool = False) -> TokenData:
    """The token cache of a finished LM run, refused (DataError) if it was made with another tokenizer than the
    run's own tokenizer.json. ``run_cfg.data.root`` says where to look (callers override it with data_root=).

    ``may_build``: build a missing cache. Only when the caller's user named the data root: a run directory
    may come from anyone, and its config.yaml must not choose where we write.
    """
    tokenizer = tokenizer or load_tokenizer(run_dir)
    data = load_tokens(run_cfg, log=lambda *_: None, may_build=may_build)
    if data.tokenizer_sha256 != tokenizer_sha256(tokenizer):
        raise DataError(f"token cache {data.dir} was made with a different tokenizer than {run_dir}'s "
                        f"tokenizer.json; pass data_root=<the run's data root> or delete the cache")
    return data


def windows(tokens: np.ndarray, starts: np.ndarray, length: int) -> Tensor:
    """Rows ``tokens[s : s + length]`` for each start: (len(starts), length) int64."""
    idx = starts[:, None] + np.arange(length)[None, :]
    return torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))


@torch.no_grad()
def mean_loss(model: nn.Module, tokens: np.ndarray, n_ctx: int, max_tokens: int, batch_size: int,
              device: torch.device) -> float:
    """Mean next-token cross-entropy on consecutive non-overlapping windows covering up to ``max_tokens``."""
    n_win = max(1, min((len(tokens) - 1) // n_ctx, max_tokens // n_ctx))
    starts = np.arange(n_win) * n_ctx
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, n_win, batch_size):
        seq = windows(tokens, starts[i : i + batch_size], n_ctx + 1).to(device)
        logits = model(seq[:, :-1])
        total += F.cross_entropy(logits.float().flatten(0, 1), seq[:, 1:].flatten(), reduction="sum").item()
        count += seq[:, 1:].numel()
    model.train(was_training)
    return total / count


def split_documents(tokens: np.ndarray, eot: int, n_docs: int, chunk: int = 1 << 16) -> list[list[int]]:
    """The first ``n_docs`` complete documents of a token stream, as lists of ids without end-of-text."""
    docs, cur = [], []
    for start in range(0, len(tokens), chunk):
        for t in tokens[start : start + chunk].tolist():
            if t == eot:
                if cur:
                    docs.append(cur)
                cur = []
                if len(docs) >= n_docs:
                    return docs
            else:
                cur.append(t)
    return docs


class RuleEval:
    """The planted negation rule on held-out stories (issue 5 "The stories rule evaluation").

    At each "so <pronoun>" the model's next-token logits are restricted to the outcome verbs; the prediction
    is correct when the highest-scoring verb has the polarity the rule demands.
    """

    def __init__(self, data: TokenData, n_docs: int, n_ctx: int):
        """Use the first ``n_docs`` held-out documents of the token cache (split at end-of-text)."""
        tok = data.tokenizer
        vocab = story_rule.rule_vocabulary()
        ids = [word_id(tok, w) for w in vocab["positive_verb"] + vocab["negative_verb"]]
        if any(i is None for i in ids):
            raise DataError("the tokenizer splits some outcome verbs into several tokens; raise data.vocab_size")
        self.verb_ids = torch.tensor(ids)
        self.n_pos = len(vocab["positive_verb"])
        eot = tok.token_to_id(EOT)
        self.rows, self.sites = [], []  # sites: (row, position, cell, verb_positive)
        for doc in split_documents(data.val, eot, n_docs):
            row = [eot] + doc[: n_ctx - 1]  # as in training, a story follows an end-of-text token
            words = [tok.id_to_token(i).lstrip("▁") for i in row]
            for pos, cell, positive in story_rule.rule_sites(words):
                self.sites.append((len(self.rows), pos, cell, positive))
            self.rows.append(row)

    @torch.no_grad()
    def __call__(self, model: nn.Module, device: torch.device, batch_size: int = 64, limit: int | None = None) -> dict[str, Any]:
        was_training = model.training
        model.eval()
        correct = {c: 0 for c in story_rule.CELLS}
        count = {c: 0 for c in story_rule.CELLS}
        margin = 0.0
        by_row: dict[int, list] = {}
        for s in self.sites:
            by_row.setdefault(s[0], []).append(s[1:])
        verb_ids = self.verb_ids.to(device)
        n_rows = len(self.rows) if limit is None else min(limit, len(self.rows))
        for i in range(0, n_rows, batch_size):
            rows = self.rows[i : min(i + batch_size, n_rows)]
            width = max(len(r) for r in rows)
            batch = torch.tensor([r + [r[-1]] * (width - len(r)) for r in rows], device=device)  # causal: padding is harmless
            logits = model(batch).float()[..., verb_ids]  # (b, T, n_verbs)
            for j in range(len(rows)):
                for pos, cell, positive in by_row.get(i + j, []):
                    v = logits[j, pos]
                    pred_positive = bool(v.argmax() < self.n_pos)
                    correct[cell] += pred_positive == positive
                    count[cell] += 1
                    gap = v[: self.n_pos].logsumexp(0) - v[self.n_pos :].logsumexp(0)
                    margin += float(gap if positive else -gap)
        model.train(was_training)
        acc = {c: correct[c] / count[c] if count[c] else float("nan") for c in story_rule.CELLS}
        n = sum(count.values())
        return {"rule_acc": {c: acc[c] for c in story_rule.CELLS}, "rule_count": count,
                "rule_acc_min": min(acc.values()), "rule_acc_mean": sum(correct.values()) / max(n, 1),
                "rule_logit_margin": margin / max(n, 1)}


# --- E15: fine-tuning a gated (swish) LM into a bilinear one by annealing beta --------------------------------

def gate_betas(model: nn.Module) -> list[Tensor]:
    """The 0-d beta buffers of the model's swish gates (one per layer); empty for other MLPs."""
    return [m.beta for m in model.modules() if isinstance(m, Bilinear) and m.gate == "swish"]


def beta_keys(model: nn.Module) -> set[str]:
    """State-dict names of every gate's beta buffer, stored (swish) or not (silu and the rest)."""
    return {f"{name}.beta" for name, m in model.named_modules() if isinstance(m, Bilinear)}


def anneal_steps(fraction: float, total_steps: int) -> int:
    """The optimizer step at which E15's beta reaches 0: ``round(fraction * total_steps)``, at least 1."""
    return max(1, round(fraction * total_steps))


def annealed_beta(beta0: float, fraction: float, total_steps: int, done: int) -> float:
    """Swish's beta after ``done`` optimizer steps (E15): linear from ``beta0`` at step 0 to exactly 0 at
    ``anneal_steps(fraction, total_steps)``, then 0, where the MLP is bilinear (Swish_0(a) = a/2)."""
    end = anneal_steps(fraction, total_steps)
    return 0.0 if done >= end else beta0 * (1.0 - done / end)


def anneal_fraction(cfg: DictConfig) -> float | None:
    """``train.beta_anneal_fraction``, checked: null, or a number in (0, 1] with ``model.mlp=swish``."""
    f = cfg.train.get("beta_anneal_fraction")
    if f is None:
        return None
    if cfg.model.mlp != "swish":
        raise ConfigError(f"config: train.beta_anneal_fraction anneals the beta of a swish gate; it needs "
                          f"model.mlp=swish, got model.mlp={cfg.model.mlp}")
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
        raise ConfigError(f"config: train.beta_anneal_fraction must be a number in (0, 1], got {f!r}")
    return float(f)


def init_from_run(model: nn.Module, run_dir: str | Path, tokenizer_sha: str) -> str:
    """Load the final weights of the finished LM run ``run_dir`` into ``model`` (``train.init_from``, E15).

    Every weight must match the config's shapes; only the gates' beta buffers are the model's own (from
    ``model.beta``), since a SwiGLU run stores none. The run must share this run's tokenizer, else its token
    ids would mean other words. Returns the sha256 of the loaded weights file, for the run's metrics.
    """
    run = Path(run_dir)
    if not checkpoint.is_complete(run):
        raise CheckpointError(f"train.init_from={run_dir}: not a finished run directory (needs {checkpoint.WEIGHTS} "
                              f"and a complete {checkpoint.METRICS})")
    if tokenizer_sha256(load_tokenizer(run)) != tokenizer_sha:
        raise CheckpointError(f"train.init_from={run_dir}: that run used another tokenizer than this run's token cache")
    try:
        checkpoint.load_weights(run / checkpoint.WEIGHTS, model, keep=beta_keys(model))
    except CheckpointError as e:
        raise CheckpointError(f"train.init_from: {e}") from None
    return checkpoint.file_sha256(run / checkpoint.WEIGHTS)


class LMTask:
    """Next-token prediction with AdamW under a token budget (``train.tokens``)."""

    def __init__(self, cfg: DictConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        t = cfg.train
        self.data = load_tokens(cfg)
        vocab = self.data.tokenizer.get_vocab_size()
        if vocab > cfg.model.vocab_size:
            raise ConfigError(f"config: model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                              f"{vocab} tokens")
        torch.manual_seed(cfg.seed)
        self.model: nn.Module = build_model(cfg.model).to(device)
        self.beta_anneal_fraction = anneal_fraction(cfg)
        self.init_from, self.init_sha = t.get("init_from"), None
        if self.init_from:  # E15: start from a finished run (a resumed run then loads its own checkpoint over it)
            self.init_sha = init_from_run(self.model, self.init_from, self.data.tokenizer_sha256)
        self.n_ctx = int(cfg.model.n_ctx)
        if t.batch_size < 1 or t.tokens < 1:
            raise ConfigError(f"config: train.batch_size and train.tokens must be >= 1, got {t.batch_size}, {t.tokens}")
        if len(self.data.train) <= self.n_ctx + 1:
            raise DataError(f"{self.data.dir}: the train split has {len(self.data.train)} tokens, fewer than one "
                            f"window of n_ctx={self.n_ctx}")
        self.batch_size = int(t.batch_size)
        self.tokens_per_step = self.batch_size * self.n_ctx
        self.total_steps = math.ceil(t.tokens / self.tokens_per_step)
        self.time_budget_s = t.get("time_budget_s")
        if self.time_budget_s:  # E14 "equal wall-clock": as many steps as this model runs in the budget
            self.steps_per_s = self._measure_steps_per_s()
            self.total_steps = max(1, int(self.time_budget_s * self.steps_per_s))
        self.steps_per_epoch = max(1, len(self.data.train) // self.tokens_per_step)  # one pass over the train tokens
        self.eval_every_steps = max(1, int(t.eval_every))
        self.rule_eval = None
        if cfg.data.source == "stories":
            self.rule_eval = RuleEval(self.data, int(cfg.data.rule_eval_stories), self.n_ctx)

    def _measure_steps_per_s(self, warmup: int = 3, timed: int = 10) -> float:
        """Optimizer steps per second of this model on this machine, timed on a throwaway copy."""
        model = copy.deepcopy(self.model)
        opt = torch.optim.AdamW(model.parameters(), lr=0.0)
        gen = torch.Generator(device=self.device).manual_seed(0)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" and self.cfg.train.bf16
                    else contextlib.nullcontext())
        for i in range(warmup + timed):
            if i == warmup:
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            with autocast:
                loss, _ = self.loss(model, self.train_batch(i, gen), gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return timed / (time.perf_counter() - t0)

    def train_batch(self, step: int, generator: torch.Generator) -> Tensor:
        """(batch_size, n_ctx + 1) token windows at random offsets of the train split."""
        high = len(self.data.train) - self.n_ctx - 1
        starts = torch.randint(0, high + 1, (self.batch_size,), generator=generator, device=generator.device)
        return windows(self.data.train, starts.cpu().numpy(), self.n_ctx + 1).to(self.device, non_blocking=True)

    def loss(self, model: nn.Module, batch: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        logits = model(batch[:, :-1])
        return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten()), {}

    def after_step(self, step: int) -> None:
        """E15: set swish's beta for the next step; a function of the step alone, so resume stays exact."""
        if self.beta_anneal_fraction is not None:
            beta = annealed_beta(float(self.cfg.model.beta), self.beta_anneal_fraction, self.total_steps, step + 1)
            for b in gate_betas(self.model):
                b.fill_(beta)

    def _val_loss(self, model: nn.Module, max_tokens: int) -> float:
        return mean_loss(model, self.data.val, self.n_ctx, max_tokens, self.batch_size, self.device)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        out = {"val_loss": self._val_loss(model, int(self.cfg.train.eval_tokens))}
        if self.rule_eval is not None:  # the rule on a few hundred stories, to watch it being learned
            rule = self.rule_eval(model, self.device, limit=300)
            out.update({f"rule_acc_{c}": v for c, v in rule["rule_acc"].items()})
        if betas := gate_betas(model):  # E15: the history shows the loss along the beta schedule
            out["beta"] = float(betas[0])
        return out

    def final_metrics(self, model: nn.Module) -> dict[str, Any]:
        t = self.cfg.train
        out: dict[str, Any] = {
            "val_loss": self._val_loss(model, int(t.final_eval_tokens)),
            "train_loss": mean_loss(model, self.data.train, self.n_ctx, int(t.eval_tokens), self.batch_size, self.device),
            "tokens": self.total_steps * self.tokens_per_step, "n_params": self.model.n_params(non_embedding=False),
            "n_params_non_embedding": self.model.n_params(), "mlp": self.cfg.model.mlp,
            "vocab_size": self.data.tokenizer.get_vocab_size(), "n_train_tokens": int(len(self.data.train)),
            "n_val_tokens": int(len(self.data.val)), "token_cache": str(self.data.dir),
            "beta": float(betas[0]) if (betas := gate_betas(model)) else None,  # E15: 0 = a bilinear model
            "init_from": self.init_from, "init_from_weights_sha256": self.init_sha,
        }
        if self.rule_eval is not None:
            out.update(self.rule_eval(model, self.device))
        return out

    def save_artifacts(self, run_dir) -> None:
        """The tokenizer, so analyses decode tokens without the corpus."""
        shutil.copyfile(self.data.dir / TOKENIZER_FILE, Path(run_dir) / TOKENIZER_FILE)
        if self.time_budget_s:
            # The calibrated step count is fixed once per run, so a resumed run keeps the same schedule.
            path = Path(run_dir) / "budget.json"
            if self.cfg.train.resume and path.exists():
                self.total_steps = int(checkpoint.read_json(path)["total_steps"])
            else:
                checkpoint.write_json(path, {"time_budget_s": self.time_budget_s, "steps_per_s": self.steps_per_s,
                                             "total_steps": self.total_steps})
