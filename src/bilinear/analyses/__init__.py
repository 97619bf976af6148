"""Named analyses, one module per experiment (PAPER.md E1...). Each registers itself here.

Two scopes:
    run    ``fn(ctx: RunContext, out: Path) -> dict``: one run directory; writes to <run>/analysis/<name>/
    cross  ``fn(runs: list[RunContext], out: Path, cfg) -> dict``: several runs (a sweep); writes to <out>/<name>/
The returned dict is that analysis's metrics; all of them are merged into analysis/metrics.json.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from bilinear import checkpoint
from bilinear.errors import ConfigError


@dataclass(frozen=True)
class Analysis:
    name: str
    fn: Callable
    kinds: tuple[str, ...]  # task kinds (cfg.task.kind) it applies to
    scope: str  # "run" or "cross"
    default: bool  # part of the default set when no analyses=[...] is given


REGISTRY: dict[str, Analysis] = {}

# Modules that register analyses; a new experiment adds its module name here.
_MODULES = ["spectrum", "eigenvectors", "samples", "lm_exactness", "gated_comparison", "toys", "adversarial", "augment_grid", "overfitting", "truncation", "consistency", "explain", "hosvd", "beta_annealing", "lowrank", "interactions", "negation", "sae_quality"]


def register(name: str, kinds: tuple[str, ...], scope: str = "run", default: bool = True):
    def wrap(fn: Callable) -> Callable:
        REGISTRY[name] = Analysis(name, fn, tuple(kinds), scope, default)
        return fn

    return wrap


def _load_all() -> None:
    for mod in _MODULES:
        importlib.import_module(f"bilinear.analyses.{mod}")


def _select(names, kind: str, scope: str) -> list[Analysis]:
    _load_all()
    if names is None:
        return [a for a in REGISTRY.values() if a.scope == scope and a.default and kind in a.kinds]
    chosen = []
    for name in names:
        if name not in REGISTRY:
            raise ConfigError(f"config: unknown analysis {name!r}; available: {', '.join(sorted(REGISTRY))}")
        a = REGISTRY[name]
        if a.scope != scope:
            hint = "runs=[...]" if a.scope == "cross" else "ckpt=<run>"
            raise ConfigError(f"config: analysis {name!r} works across runs; call it with {hint}" if a.scope == "cross"
                              else f"config: analysis {name!r} analyses one run; call it with {hint}")
        if kind not in a.kinds:
            raise ConfigError(f"config: analysis {name!r} does not apply to a {kind} run (it needs {', '.join(a.kinds)})")
        chosen.append(a)
    return chosen


def _merge_metrics(path: Path, new: dict) -> None:
    old = checkpoint.read_json(path) if path.exists() else {}
    old.update(new)
    checkpoint.write_json(path, old)


def run_run_analyses(run_dir: Path, cfg: DictConfig) -> Path:
    from bilinear.analyses.context import RunContext

    ctx = RunContext(run_dir, cfg)
    analyses = _select(cfg.analyses, ctx.kind, "run")
    if not analyses:
        hint = ("; an SAE is analysed with its LM: ckpt=<LM run> saes=[<SAE runs>] analyses=[interactions,negation,"
                "lowrank], or across SAE runs: runs=[...] analyses=[sae_quality]") if ctx.kind == "sae" else ""
        raise ConfigError(f"config: no analysis applies to a {ctx.kind} run on its own{hint}")
    results = {}
    for a in analyses:
        out = ctx.analysis_dir / a.name
        out.mkdir(parents=True, exist_ok=True)
        results[a.name] = a.fn(ctx, out)
    results.update(ctx.shared_metrics)
    _merge_metrics(ctx.analysis_dir / "metrics.json", results)
    return ctx.analysis_dir


def run_cross_analyses(run_dirs: list[Path], out_root: Path, cfg: DictConfig) -> Path:
    from bilinear.analyses.context import RunContext

    contexts = [RunContext(r, cfg) for r in run_dirs]
    kinds = {c.kind for c in contexts}
    if len(kinds) != 1:
        raise ConfigError(f"config: runs=[...] mixes task kinds {sorted(kinds)}")
    analyses = _select(cfg.analyses, kinds.pop(), "cross")
    results = {}
    for a in analyses:
        out = out_root / a.name
        out.mkdir(parents=True, exist_ok=True)
        results[a.name] = a.fn(contexts, out, cfg)
    _merge_metrics(out_root / "metrics.json", results)
    return out_root
