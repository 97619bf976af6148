"""Named analyses, one module per experiment (PAPER.md E1...). Each registers itself here.

Two scopes:
    run    ``fn(ctx: RunContext, out: Path) -> dict``: one run directory; writes to <run>/analysis/<name>/
    cross  ``fn(runs: list[RunContext], out: Path, cfg) -> dict``: several runs (a sweep); writes to <out>/<name>/
The returned dict is that analysis's metrics; all of them are merged into analysis/metrics.json, together with
``exactness_checks``: every exactness check made (passed or failed), which claim C1 counts. A failing analysis
is recorded as ``{"failed": true, "error": ...}`` and the metrics of the analyses before it are kept.
"""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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
EXACTNESS_KEY = "exactness_checks"  # analysis/metrics.json: every decomposition checked, passed or not (claim C1)

# Modules that register analyses; a new experiment adds its module name here.
_MODULES = ["spectrum", "eigenvectors", "samples", "lm_exactness", "gated_comparison", "toys", "adversarial", "augment_grid", "overfitting", "truncation", "consistency", "explain", "hosvd", "beta_annealing", "lowrank", "interactions", "negation", "sae_quality", "similarity", "explorer"]


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


def jsonable(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None: ``json.dumps`` writes NaN/inf as bare ``NaN`` tokens,
    which are not JSON and break every other reader of metrics.json."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    """checkpoint.write_json of :func:`jsonable` ``obj``: what every analysis uses for its own json files."""
    checkpoint.write_json(path, jsonable(obj))


def _merge_metrics(path: Path, new: dict) -> None:
    """Merge ``new`` into the metrics.json at ``path`` under its lock, so two analyses ending together both land.

    Top-level keys are replaced (a re-run analysis, or a failed one, replaces its earlier entry, so a stale passing
    number never survives a failing call); ``exactness_checks`` is merged per check, keeping checks made by other calls.
    """
    new = dict(new)
    with checkpoint.locked(path):
        old = checkpoint.read_json(path) if path.exists() else {}
        checks = {**old.get(EXACTNESS_KEY, {}), **new.pop(EXACTNESS_KEY, {})}
        old.update(new)
        if checks:
            old[EXACTNESS_KEY] = checks
        write_json(path, old)


def _one_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _run_each(analyses: list[Analysis], call: Callable[[Analysis], dict], results: dict, where: str) -> None:
    """Call each analysis in turn, printing one line per analysis as it ends (name, seconds). A failing analysis
    leaves ``{"failed": true, "error": ...}`` in ``results`` and re-raises; what ran before it stays in ``results``."""
    for a in analyses:
        t0 = time.perf_counter()
        try:
            results[a.name] = call(a)
        except BaseException as e:
            results[a.name] = {"failed": True, "error": _one_line(e)}
            print(f"[analyze] {a.name} FAILED after {time.perf_counter() - t0:.1f} s ({where})", flush=True)
            raise
        print(f"[analyze] {a.name} done in {time.perf_counter() - t0:.1f} s ({where})", flush=True)


def run_run_analyses(run_dir: Path, cfg: DictConfig) -> Path:
    from bilinear.analyses.context import RunContext

    ctx = RunContext(run_dir, cfg)
    analyses = _select(cfg.analyses, ctx.kind, "run")
    if not analyses:
        hint = ("; an SAE is analysed with its LM: ckpt=<LM run> saes=[<SAE runs>] analyses=[interactions,negation,"
                "lowrank], or across SAE runs: runs=[...] analyses=[sae_quality]") if ctx.kind == "sae" else ""
        raise ConfigError(f"config: no analysis applies to a {ctx.kind} run on its own{hint}")

    def call(a: Analysis) -> dict:
        out = ctx.analysis_dir / a.name
        out.mkdir(parents=True, exist_ok=True)
        return a.fn(ctx, out)

    results: dict = {}
    try:
        _run_each(analyses, call, results, ctx.run_dir.name)
    finally:  # also when an analysis fails: the earlier analyses' metrics and every exactness check are kept
        results.update(ctx.shared_metrics)
        results[EXACTNESS_KEY] = dict(ctx.exactness_checks)
        _merge_metrics(ctx.analysis_dir / "metrics.json", results)
    return ctx.analysis_dir


def run_cross_analyses(run_dirs: list[Path], out_root: Path, cfg: DictConfig) -> Path:
    from bilinear.analyses.context import RunContext

    contexts = [RunContext(r, cfg) for r in run_dirs]
    kinds = {c.kind for c in contexts}
    if len(kinds) != 1:
        raise ConfigError(f"config: runs=[...] mixes task kinds {sorted(kinds)}")
    analyses = _select(cfg.analyses, kinds.pop(), "cross")

    def call(a: Analysis) -> dict:
        out = out_root / a.name
        out.mkdir(parents=True, exist_ok=True)
        return a.fn(contexts, out, cfg)

    results: dict = {}
    try:
        _run_each(analyses, call, results, f"{len(contexts)} runs")
    finally:
        # every run's checks, keyed by run so runs of one sweep do not overwrite each other's (C1 counts them all)
        results[EXACTNESS_KEY] = {f"{c.run_dir.name}: {what}": rec for c in contexts for what, rec in c.exactness_checks.items()}
        _merge_metrics(out_root / "metrics.json", results)
    return out_root
