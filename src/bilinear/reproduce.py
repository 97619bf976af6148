"""``make reproduce``: train and analyse every experiment of a profile, collect results/, write REPORT.md.

A profile (conf/reproduce/<profile>.yaml) lists experiments. Each experiment has runs (named override
lists, or a ``grid`` expanded into one run per combination), the analyses to run on each run, and the
cross-run analyses. Everything goes through the two user commands (``python -m train``,
``python -m analyze``) as subprocesses, so reproduce exercises exactly what users run.

A run whose directory is complete, and was trained with the overrides the profile gives it now, is never
retrained, so reproduce can be stopped and restarted; a run whose overrides changed is moved aside
(``<name>.stale-<time>``) and trained again, and an unfinished run with a checkpoint is resumed. A run or
analysis that fails is recorded with its one-line error and the report says so; the other experiments go
on, and the command exits non-zero at the end. Each experiment's results are built in a temporary folder
and swapped in when it ends, so an interrupted rebuild leaves the previous results whole.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from bilinear import checkpoint
from bilinear.config import project_root
from bilinear.errors import ConfigError
from bilinear.rundir import checkpoint_step

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


# Overrides that say where or how visibly a run happens, not what it is: a change in them keeps a run valid.
PLACEMENT_KEYS = ("data_root", "hydra.run.dir", "train.progress", "train.resume")
DETAIL_LINE = re.compile(r"^(full_key:|object_type=|reference_type=|To append)")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*")


def error_line(lines: list[str]) -> str:
    """The line of a failed command's output that says what went wrong.

    Our commands print ``error: ...``; Hydra's own override errors start "Could not override ..." (with the
    reason on the next lines); anything else ends in a traceback whose last exception line is the cause.
    Hydra's closing advice ("Set the environment variable HYDRA_FULL_ERROR=1 ...") and omegaconf's detail
    lines (full_key, object_type) are never it.
    """
    lines = [ln.strip() for ln in lines if ln.strip() and "HYDRA_FULL_ERROR" not in ln]
    for ln in reversed(lines):
        if ln.startswith("error:"):
            return ln
    for i, ln in enumerate(lines):
        if ln.startswith(("Could not override", "Error merging override", "Could not load")):
            reason = [r for r in lines[i + 1 : i + 4] if r.startswith(("Key ", "Invalid ", "Could not find"))]
            return " ".join([ln, *reason[:1]])
    for ln in reversed(lines):
        if EXCEPTION_LINE.match(ln) and not DETAIL_LINE.match(ln):
            return ln
    rest = [ln for ln in lines if not DETAIL_LINE.match(ln)]
    return rest[-1] if rest else "(no output)"


def run_overrides(run_dir: Path) -> list[str] | None:
    """The overrides a run was trained with, minus placement keys; None if unknown.

    The manifest's first session is the record (only a session that passed the start checks writes it);
    Hydra's .hydra/overrides.yaml is rewritten by every call into the folder, even a refused one, so it is
    only the fallback for runs written before manifests.
    """
    manifest = checkpoint.read_manifest(run_dir)
    sessions = (manifest or {}).get("sessions") or []
    if sessions and isinstance(sessions[0].get("overrides"), list):
        return comparable(sessions[0]["overrides"])
    path = run_dir / ".hydra" / "overrides.yaml"
    try:
        stored = OmegaConf.load(path)
    except Exception:  # noqa: BLE001 - missing or unreadable: the run's provenance is unknown
        return None
    return comparable(list(stored)) if isinstance(stored, ListConfig) else None


def comparable(overrides: list[str]) -> list[str]:
    return sorted(str(o) for o in overrides if str(o).split("=", 1)[0].lstrip("+~") not in PLACEMENT_KEYS)


class Runner:
    """Calls the two commands, logging each call's output to <runs_root>/logs/; on SIGTERM or Ctrl-C the
    children are stopped too, so no training is left running without its parent."""

    def __init__(self, runs_root: Path, data_root: Path, log_dir: Path):
        self.runs_root, self.data_root, self.log_dir = runs_root, data_root, log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONPATH": str(project_root() / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.env.setdefault("WANDB_MODE", "disabled")
        self.children: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False
        self.reuse_only = False  # --reuse-only: analyse finished runs, train none

    def call(self, module: str, args: list[str], log_name: str) -> tuple[bool, str]:
        """Run ``python -m module args``; return (ok, the line that says what went wrong)."""
        log = self.log_dir / f"{log_name}.log"
        with open(log, "w") as f:
            with self.lock:
                if self.stopping:
                    return False, "error: reproduce was stopped"
                proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=f, stderr=subprocess.STDOUT,
                                        cwd=project_root(), env=self.env)
                self.children.add(proc)
            try:
                returncode = proc.wait()
            finally:
                with self.lock:
                    self.children.discard(proc)
        lines = log.read_text(errors="replace").splitlines()
        return returncode == 0, ("" if returncode == 0 else error_line(lines))

    def stop_children(self) -> None:
        """Terminate every running child and wait for it (then kill what is left after 30 s)."""
        with self.lock:
            self.stopping = True
            children = list(self.children)
        for p in children:
            p.terminate()
        for p in children:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def collect(src: Path, dst: Path, include_figures: bool = True) -> None:
    """Copy the small outputs (figures, json, csv) of ``src`` into ``dst``, keeping the layout."""
    for path in src.rglob("*"):
        if path.is_file() and path.suffix in COLLECT_SUFFIXES and (include_figures or path.suffix != ".png"):
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


class Progress:
    """One line per finished run or analysis, with elapsed time and an estimate of what remains."""

    def __init__(self, exp_name: str, n_runs: int):
        self.exp_name, self.n_runs, self.t0 = exp_name, n_runs, time.time()
        self.done, self.trained, self.train_time = 0, 0, 0.0

    def run_finished(self, name: str, outcome: str, seconds: float) -> None:
        self.done += 1
        if outcome == "trained":
            self.trained, self.train_time = self.trained + 1, self.train_time + seconds
        left = self.n_runs - self.done
        eta = f", about {_duration(left * self.train_time / self.trained)} left" if left and self.trained else ""
        print(f"[{self.exp_name}] run {self.done}/{self.n_runs} {name}: {outcome} in {_duration(seconds)}"
              f" ({_duration(time.time() - self.t0)} into this experiment{eta})", flush=True)

    def step(self, what: str, ok: bool, seconds: float) -> None:
        print(f"[{self.exp_name}] {what}: {'done' if ok else 'FAILED'} in {_duration(seconds)}", flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds} s" if seconds < 120 else (f"{seconds // 60} min" if seconds < 7200 else f"{seconds / 3600:.1f} h")


def set_aside(run_dir: Path) -> Path:
    """Move a run that no longer matches its profile out of the way (kept, never deleted)."""
    target = run_dir.with_name(f"{run_dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.rename(target)
    return target


def prepare_run(run_dir: Path, overrides: list[str]) -> tuple[str, list[str]]:
    """What to do with a run's directory: ("reuse" | "train" | "resume", extra overrides).

    A finished run is reused only if it was trained with these overrides; otherwise it is set aside. An
    unfinished run with a checkpoint is resumed (the training command refuses a resume whose config differs);
    any other leftover is set aside so training starts in an empty folder.
    """
    if run_dir.exists():
        same = run_overrides(run_dir) == comparable(overrides)
        if checkpoint.is_complete(run_dir) and same:
            return "reuse", []
        if same and checkpoint_step(run_dir) is not None:
            return "resume", ["train.resume=true"]
        why = "its overrides changed" if checkpoint.is_complete(run_dir) else "it was unfinished"
        moved = set_aside(run_dir)
        print(f"  {run_dir.name}: {why}; moved to {moved.name} and trained again", flush=True)
    return "train", []


def run_experiment(exp_name: str, exp: DictConfig, scale: str, runner: Runner, exp_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Train (or reuse) every run of one experiment, analyse them, and collect their outputs. Returns its status.

    The outputs are collected into ``<out_dir>.building`` and swapped into place at the end, so until then
    the previous results stay as they were (results are never mixed with an older profile's).
    """
    t0 = time.time()
    st: dict[str, Any] = {"runs": {}, "errors": []}
    building = out_dir.with_name(f".{out_dir.name}.building")
    if building.exists():
        shutil.rmtree(building)
    done_runs = []
    runs = expand_runs(exp)
    progress = Progress(exp_name, len(runs))
    print(f"[{exp_name}] starting: {len(runs)} runs", flush=True)
    for name, overrides in runs.items():
        run_dir = exp_dir / name
        overrides = [resolve_refs(o, runner.runs_root) for o in overrides]
        args = [*overrides, f"scale={scale}", f"data_root={runner.data_root}", f"hydra.run.dir={run_dir}", "train.progress=false"]
        t_run = time.time()
        if runner.reuse_only:  # --reuse-only: analyse what is finished, touch and train nothing
            finished = checkpoint.is_complete(run_dir) and run_overrides(run_dir) == comparable([*overrides, f"scale={scale}"])
            if not finished:
                st["runs"][name] = "missing"
                st.setdefault("missing", []).append(name)
                progress.run_finished(name, "missing (not trained; --reuse-only)", 0.0)
                continue
        action, extra = prepare_run(run_dir, [*overrides, f"scale={scale}"])
        if action == "reuse":
            st["runs"][name] = "reused"
        else:
            ok, last = runner.call("train", args + extra, f"{exp_name}__{name}__train")
            st["runs"][name] = ("resumed" if action == "resume" else "trained") if ok else "failed"
            if not ok:
                st["errors"].append(f"train {name}: {last}")
                progress.run_finished(name, f"FAILED ({last})", time.time() - t_run)
                continue
        progress.run_finished(name, st["runs"][name], time.time() - t_run)
        done_runs.append(run_dir)
        # the run's own training seconds, also when it is reused: what rebuilding it from scratch costs
        m = checkpoint.read_json(run_dir / checkpoint.METRICS) if (run_dir / checkpoint.METRICS).exists() else {}
        st["train_seconds"] = round(st.get("train_seconds", 0.0) + float(m.get("train_seconds") or 0.0), 1)
        if exp.get("analyses"):
            t_an = time.time()
            ok, last = runner.call("analyze", [f"ckpt={run_dir}", f"analyses=[{','.join(exp.analyses)}]",
                                               *exp.get("analyze_overrides", [])], f"{exp_name}__{name}__analyze")
            progress.step(f"analyses of {name}", ok, time.time() - t_an)
            if not ok:
                st["errors"].append(f"analyze {name}: {last}")
        run_out = building / name
        collect(run_dir / "analysis", run_out / "analysis", include_figures=exp.get("collect_run_figures", True))
        for f in (checkpoint.CONFIG, checkpoint.METRICS, checkpoint.HISTORY):
            if (run_dir / f).exists():
                run_out.mkdir(parents=True, exist_ok=True)
                shutil.copy2(run_dir / f, run_out / ("train_metrics.json" if f == checkpoint.METRICS else f))
    if exp.get("cross_analyses") and done_runs:
        cross_out = exp_dir / "analysis"
        t_an = time.time()
        ok, last = runner.call("analyze", [f"runs=[{','.join(map(str, done_runs))}]", f"out={cross_out}",
                                           f"analyses=[{','.join(exp.cross_analyses)}]", *exp.get("analyze_overrides", [])],
                               f"{exp_name}__cross__analyze")
        progress.step("cross-run analyses", ok, time.time() - t_an)
        if not ok:
            st["errors"].append(f"cross-run analyses: {last}")
        collect(cross_out, building / "analysis")
    for key, spec in (exp.get("lm_analyses") or {}).items():
        _lm_analyses(exp_name, key, spec, runner, exp_dir, building, st)
    swap_in(building, out_dir)
    st["seconds"] = round(time.time() - t0, 1)
    print(f"[{exp_name}] finished: {len(done_runs)} runs in {_duration(st['seconds'])}, {len(st['errors'])} errors", flush=True)
    return st


def swap_in(building: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``building`` (two renames; the old folder is removed only after)."""
    building.mkdir(parents=True, exist_ok=True)
    old = out_dir.with_name(f".{out_dir.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        out_dir.rename(old)
    building.rename(out_dir)
    if old.exists():
        shutil.rmtree(old)


def _lm_analyses(exp_name: str, key: str, spec: DictConfig, runner: Runner, exp_dir: Path, out_dir: Path,
                 st: dict[str, Any]) -> None:
    """``python -m analyze ckpt=<LM> saes=[<this experiment's SAE runs>] analyses=[...] out=<exp>/<key>/analysis``."""
    ckpt = resolve_refs(spec.ckpt, runner.runs_root)
    saes = [str(exp_dir / s) for s in spec.get("saes", [])]
    target = exp_dir / key / "analysis"
    t0 = time.time()
    ok, last = runner.call("analyze", [f"ckpt={ckpt}", f"saes=[{','.join(saes)}]", f"out={target}",
                                       f"analyses=[{','.join(spec.analyses)}]", *spec.get("overrides", [])],
                           f"{exp_name}__{key}__analyze")
    print(f"[{exp_name}] {key} analyses: {'done' if ok else 'FAILED'} in {_duration(time.time() - t0)}", flush=True)
    if not ok:
        st["errors"].append(f"{key} analyses: {last}")
    collect(target, out_dir / key / "analysis")


def reproduce(profile: str, results_dir: Path, runs_root: Path, data_root: Path, only: list[str] | None = None,
              jobs: int = 1, reuse_only: bool = False) -> Path:
    """Run a profile's experiments, ``jobs`` at a time (each process then gets one torch thread, since more
    threads than free cores makes torch spin against itself), then write results/ and the report.

    ``reuse_only``: train nothing; analyse the runs that are finished and record the others as missing (for a
    profile whose training is split across machines or sessions; the report lists what is missing)."""
    spec = load_profile(profile)
    unknown = sorted(set(only or []) - set(spec.experiments))
    if unknown:
        raise ConfigError(f"reproduce: --only names experiments not in profile {profile}: {', '.join(unknown)} "
                          f"(it has {', '.join(spec.experiments)})")
    runs_root = runs_root / profile
    runner = Runner(runs_root, data_root, runs_root / "logs")
    runner.reuse_only = reuse_only
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

    def stop(signum, _frame):  # SIGTERM (a scheduler, `kill`) must not leave trainings running on their own
        print(f"reproduce: signal {signum}, stopping the running commands", file=sys.stderr, flush=True)
        runner.stop_children()
        os._exit(128 + signum)

    previous_handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    order = topological(names, deps)
    print(f"reproduce {profile}: {len(order)} experiments ({', '.join(order)}), {max(1, jobs)} at a time", flush=True)
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for n in order:
                futures[n] = pool.submit(job, n)
            futures = {n: futures[n] for n in names}
            status: dict[str, Any] = {n: f.result() for n, f in futures.items()}
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
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


def failures(results_dir: Path, names: list[str] | None = None) -> dict[str, list[str]]:
    """Errors recorded in status.json, per experiment (only ``names`` if given)."""
    exps = read_status(results_dir).get("experiments", {})
    return {n: v["errors"] for n, v in exps.items()
            if isinstance(v, dict) and v.get("errors") and (names is None or n in names)}


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
    p.add_argument("--reuse-only", action="store_true",
                   help="train nothing: analyse the finished runs, record the others as missing")
    a = p.parse_args(argv)
    results = a.results or (Path("results") if a.profile == "cpu" else Path("results") / a.profile)
    report = run_command(lambda: reproduce(a.profile, results, a.runs, a.data_root, a.only, a.jobs, a.reuse_only))
    print(report)
    failed = failures(results, a.only or None)
    if failed:  # the report says what failed; the exit status must say it too, for make and schedulers
        print(f"error: {sum(map(len, failed.values()))} failures in {len(failed)} experiments "
              f"({', '.join(sorted(failed))}); see {report} and {a.runs / a.profile / 'logs'}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

