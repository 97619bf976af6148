"""``make reproduce``: train and analyse every experiment of a profile, collect results/, write REPORT.md.

A profile (conf/reproduce/<profile>.yaml) lists experiments. Each experiment has runs (named override
lists, or a ``grid`` expanded into one run per combination), the analyses to run on each run, and the
cross-run analyses. Everything goes through the two user commands (``python -m train``,
``python -m analyze``) as subprocesses, so reproduce exercises exactly what users run.

A run whose directory is complete is never retrained, so reproduce can be stopped and restarted.
A run or analysis that fails is recorded with its one-line error and the report says so; the other
experiments go on.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bilinear import checkpoint
from bilinear.config import project_root
from bilinear.errors import ConfigError

COLLECT_SUFFIXES = (".png", ".json", ".csv", ".md")
# An override may name another experiment's run, ``lm=@run:stories/bilinear``: it becomes that run's directory,
# and the experiment waits for the one it names (SAEs need their LM, a fine-tune its base model).
RUN_REF = re.compile(r"@run:([\w.-]+)/([\w.-]+)")


def resolve_refs(value: str, runs_root: Path) -> str:
    return RUN_REF.sub(lambda m: str(runs_root / m.group(1) / m.group(2)), str(value))


def experiment_deps(exp: DictConfig) -> set[str]:
    """Names of the experiments whose runs this experiment's overrides reference."""
    text = json.dumps(OmegaConf.to_container(exp))
    return {m.group(1) for m in RUN_REF.finditer(text)}


def topological(names: list[str], deps: dict[str, set[str]]) -> list[str]:
    """``names`` reordered so that every experiment comes after those it references (stable otherwise)."""
    order: list[str] = []

    def visit(n: str, stack: tuple[str, ...] = ()) -> None:
        if n in order or n not in names:
            return
        if n in stack:
            raise ConfigError(f"reproduce: experiments reference each other in a cycle: {' -> '.join(stack + (n,))}")
        for d in sorted(deps.get(n, ())):
            visit(d, stack + (n,))
        order.append(n)

    for n in names:
        visit(n)
    return order


def load_profile(profile: str) -> DictConfig:
    path = project_root() / "conf" / "reproduce" / f"{profile}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"unknown reproduce profile {profile!r}; available: {', '.join(names)}")
    return OmegaConf.load(path)


def run_name(assignment: dict[str, Any]) -> str:
    """A directory name for one grid point: ``d_hidden-30_seed-0``."""
    return "_".join(f"{k.split('.')[-1]}-{v}" for k, v in assignment.items())


def expand_runs(exp: DictConfig) -> dict[str, list[str]]:
    """Named override lists of an experiment: its explicit ``runs`` plus one per ``grid`` point."""
    runs = {name: list(ov) + list(exp.get("overrides", [])) for name, ov in (exp.get("runs") or {}).items()}
    grid = exp.get("grid")
    if grid:
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            assignment = dict(zip(keys, values))
            runs[run_name(assignment)] = [f"{k}={v}" for k, v in assignment.items()] + list(exp.get("overrides", []))
    return runs


class Runner:
    """Calls the two commands, logging each call's output to <runs_root>/logs/."""

    def __init__(self, runs_root: Path, data_root: Path, log_dir: Path):
        self.runs_root, self.data_root, self.log_dir = runs_root, data_root, log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONPATH": str(project_root() / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.env.setdefault("WANDB_MODE", "disabled")

    def call(self, module: str, args: list[str], log_name: str) -> tuple[bool, str]:
        """Run ``python -m module args``; return (ok, last stderr line)."""
        log = self.log_dir / f"{log_name}.log"
        with open(log, "w") as f:
            proc = subprocess.run([sys.executable, "-m", module, *args], stdout=f, stderr=subprocess.STDOUT,
                                  cwd=project_root(), env=self.env)
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
        return proc.returncode == 0, (lines[-1] if lines else "")


def collect(src: Path, dst: Path, include_figures: bool = True) -> None:
    """Copy the small outputs (figures, json, csv) of ``src`` into ``dst``, keeping the layout."""
    for path in src.rglob("*"):
        if path.is_file() and path.suffix in COLLECT_SUFFIXES and (include_figures or path.suffix != ".png"):
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def run_experiment(exp_name: str, exp: DictConfig, scale: str, runner: Runner, exp_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Train (or reuse) every run of one experiment, analyse them, and collect their outputs. Returns its status."""
    t0 = time.time()
    st: dict[str, Any] = {"runs": {}, "errors": []}
    if out_dir.exists():
        shutil.rmtree(out_dir)  # results are rebuilt from the runs, never mixed with an older profile's
    done_runs = []
    for name, overrides in expand_runs(exp).items():
        run_dir = exp_dir / name
        overrides = [resolve_refs(o, runner.runs_root) for o in overrides]
        args = [*overrides, f"scale={scale}", f"data_root={runner.data_root}", f"hydra.run.dir={run_dir}", "train.progress=false"]
        if checkpoint.is_complete(run_dir):
            st["runs"][name] = "reused"
        else:
            ok, last = runner.call("train", args, f"{exp_name}__{name}__train")
            st["runs"][name] = "trained" if ok else "failed"
            if not ok:
                st["errors"].append(f"train {name}: {last}")
                print(f"[{exp_name}] {name}: training failed: {last}", flush=True)
                continue
        done_runs.append(run_dir)
        # the run's own training seconds, also when it is reused: what rebuilding it from scratch costs
        m = checkpoint.read_json(run_dir / checkpoint.METRICS) if (run_dir / checkpoint.METRICS).exists() else {}
        st["train_seconds"] = round(st.get("train_seconds", 0.0) + float(m.get("train_seconds") or 0.0), 1)
        if exp.get("analyses"):
            ok, last = runner.call("analyze", [f"ckpt={run_dir}", f"analyses=[{','.join(exp.analyses)}]",
                                               *exp.get("analyze_overrides", [])], f"{exp_name}__{name}__analyze")
            if not ok:
                st["errors"].append(f"analyze {name}: {last}")
        run_out = out_dir / name
        collect(run_dir / "analysis", run_out / "analysis", include_figures=exp.get("collect_run_figures", True))
        for f in (checkpoint.CONFIG, checkpoint.METRICS, checkpoint.HISTORY):
            if (run_dir / f).exists():
                run_out.mkdir(parents=True, exist_ok=True)
                shutil.copy2(run_dir / f, run_out / ("train_metrics.json" if f == checkpoint.METRICS else f))
    if exp.get("cross_analyses") and done_runs:
        cross_out = exp_dir / "analysis"
        ok, last = runner.call("analyze", [f"runs=[{','.join(map(str, done_runs))}]", f"out={cross_out}",
                                           f"analyses=[{','.join(exp.cross_analyses)}]", *exp.get("analyze_overrides", [])],
                               f"{exp_name}__cross__analyze")
        if not ok:
            st["errors"].append(f"cross-run analyses: {last}")
        collect(cross_out, out_dir / "analysis")
    for key, spec in (exp.get("lm_analyses") or {}).items():
        _lm_analyses(exp_name, key, spec, runner, exp_dir, out_dir, st)
    st["seconds"] = round(time.time() - t0, 1)
    print(f"[{exp_name}] {len(done_runs)} runs, {st['seconds']} s, {len(st['errors'])} errors", flush=True)
    return st


def _lm_analyses(exp_name: str, key: str, spec: DictConfig, runner: Runner, exp_dir: Path, out_dir: Path,
                 st: dict[str, Any]) -> None:
    """``python -m analyze ckpt=<LM> saes=[<this experiment's SAE runs>] analyses=[...] out=<exp>/<key>/analysis``."""
    ckpt = resolve_refs(spec.ckpt, runner.runs_root)
    saes = [str(exp_dir / s) for s in spec.get("saes", [])]
    target = exp_dir / key / "analysis"
    ok, last = runner.call("analyze", [f"ckpt={ckpt}", f"saes=[{','.join(saes)}]", f"out={target}",
                                       f"analyses=[{','.join(spec.analyses)}]", *spec.get("overrides", [])],
                           f"{exp_name}__{key}__analyze")
    if not ok:
        st["errors"].append(f"{key} analyses: {last}")
    collect(target, out_dir / key / "analysis")


def reproduce(profile: str, results_dir: Path, runs_root: Path, data_root: Path, only: list[str] | None = None,
              jobs: int = 1) -> Path:
    """Run a profile's experiments, ``jobs`` at a time (each process then gets one torch thread, since more
    threads than free cores makes torch spin against itself), then write results/ and the report."""
    spec = load_profile(profile)
    runs_root = runs_root / profile
    runner = Runner(runs_root, data_root, runs_root / "logs")
    if jobs > 1:
        runner.env["OMP_NUM_THREADS"] = "1"
    names = [n for n in spec.experiments if not only or n in only]
    deps = {n: experiment_deps(spec.experiments[n]) for n in names}
    futures: dict[str, Any] = {}

    def job(n: str) -> dict[str, Any]:
        for d in deps[n]:
            if d in futures:  # submitted earlier (topological order), so waiting cannot deadlock the pool
                futures[d].result()
        return run_experiment(n, spec.experiments[n], spec.scale, runner, runs_root / n, results_dir / n)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for n in topological(names, deps):
            futures[n] = pool.submit(job, n)
    futures = {n: futures[n] for n in names}
    status: dict[str, Any] = {n: f.result() for n, f in futures.items()}
    status["_total_seconds"] = round(sum(v["seconds"] for v in status.values()), 1)
    status["_train_seconds"] = round(sum(v.get("train_seconds", 0.0) for v in status.values() if isinstance(v, dict)), 1)
    results_dir.mkdir(parents=True, exist_ok=True)
    # merge with the status of earlier (partial, --only) runs of the same profile, so one experiment can be
    # rebuilt without discarding the others' rows; experiments no longer in the profile are dropped
    previous = read_status(results_dir)
    if previous.get("profile") == profile:
        kept = {k: v for k, v in previous["experiments"].items() if k in spec.experiments and k not in status}
        status = {**kept, **status}
        status["_total_seconds"] = round(sum(v.get("seconds", 0) for k, v in status.items() if not k.startswith("_")), 1)
        status["_train_seconds"] = round(sum(v.get("train_seconds", 0) for k, v in status.items() if not k.startswith("_")), 1)
    checkpoint.write_json(results_dir / "status.json", {"profile": profile, "scale": spec.scale, "experiments": status,
                                                       "torch_threads": runner.env.get("OMP_NUM_THREADS", "all cores"), "jobs": jobs})
    shutil.copy2(project_root() / "conf" / "reproduce" / f"{profile}.yaml", results_dir / "profile.yaml")

    from bilinear.report import write_report

    return write_report(results_dir)


def read_status(results_dir: Path) -> dict:
    path = results_dir / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def main(argv: list[str] | None = None) -> None:
    import argparse

    from bilinear.config import run_command

    p = argparse.ArgumentParser(description="Rebuild every figure and claim of a reproduce profile.")
    p.add_argument("--profile", default="cpu", help="conf/reproduce/<profile>.yaml: tiny, cpu or paper")
    p.add_argument("--results", type=Path, default=None, help="where results go (default results/ for cpu, results/<profile>/ otherwise)")
    p.add_argument("--runs", type=Path, default=Path("runs/reproduce"), help="where run directories go")
    p.add_argument("--data-root", type=Path, default=Path("data"))
    p.add_argument("--only", nargs="*", help="run only these experiments")
    p.add_argument("--jobs", type=int, default=1, help="experiments run at once, each process with one torch thread")
    a = p.parse_args(argv)
    results = a.results or (Path("results") if a.profile == "cpu" else Path("results") / a.profile)
    report = run_command(lambda: reproduce(a.profile, results, a.runs, a.data_root, a.only, a.jobs))
    print(report)


if __name__ == "__main__":
    main()

