"""results/REPORT.md from the collected metrics and PAPER.md's targets (the claims checklist, §4).

Each claim (C1...C17) is a function registered with ``@claim("Cn")``; it reads only what reproduce
collected under results/ (so the report can be rebuilt from results/ alone) and returns a :class:`Row`,
or None when its experiment was not part of the profile. Claims live next to the analyses that measure
them; C1 and C2 are here because every image run feeds them.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from bilinear import checkpoint

CLAIM_IDS = [f"C{i}" for i in range(1, 18)]
CLAIM_TITLES = {
    "C1": "decomposition is exact", "C2": "accuracy of the Table 1 setup", "C3": "interpretable top eigenvectors",
    "C4": "low-rank spectra", "C5": "noise removes overfitting", "C6": "wd lowers rank, noise raises it",
    "C7": "consistency across seeds", "C8": "truncation", "C9": "Casper toy recovered", "C10": "adversarial masks",
    "C11": "HOSVD directions", "C12": "negation AND-circuit", "C13": "low-rank output features",
    "C14": "SAE training length", "C15": "SAE quality", "C16": "bilinear is competitive", "C17": "beta-annealing fine-tune",
}


@dataclass
class Row:
    claim: str
    paper: str  # PAPER.md's target
    ours: str  # what we measured
    verdict: str  # reproduced / partly / not reproduced / not run
    reference: str = ""  # a reproduction study's number, where PAPER.md gives one
    figures: list[str] = field(default_factory=list)  # paths relative to results/
    notes: str = ""


CLAIMS: dict[str, Callable[["Results"], Row | None]] = {}


def claim(cid: str):
    def wrap(fn):
        CLAIMS[cid] = fn
        return fn

    return wrap


class Results:
    """Read access to a results/ folder written by reproduce."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.status = json.loads((self.root / "status.json").read_text()) if (self.root / "status.json").exists() else {}
        self.experiments: dict[str, Any] = self.status.get("experiments", {})

    def has(self, exp: str) -> bool:
        return (self.root / exp).is_dir()

    def runs(self, exp: str) -> list[str]:
        return sorted(p.name for p in (self.root / exp).iterdir() if (p / "config.yaml").exists()) if self.has(exp) else []

    def json(self, *parts: str) -> dict | None:
        path = self.root.joinpath(*parts)
        return json.loads(path.read_text()) if path.exists() else None

    def train_metrics(self, exp: str, run: str = "main") -> dict | None:
        return self.json(exp, run, "train_metrics.json")

    def analysis(self, exp: str, run: str = "main") -> dict | None:
        """analysis/metrics.json of a run, or of the experiment's cross-run analyses with run=None."""
        return self.json(exp, "analysis", "metrics.json") if run is None else self.json(exp, run, "analysis", "metrics.json")

    def analyses_named(self, exp: str, name: str) -> dict[str, dict]:
        """``{subfolder: metrics}`` of analysis ``name`` in every <exp>/<subfolder>/analysis/metrics.json (runs and
        reproduce's ``lm_analyses`` keys alike), in name order."""
        out = {}
        for path in sorted(self.root.glob(f"{exp}/*/analysis/metrics.json")) if self.has(exp) else []:
            m = json.loads(path.read_text()).get(name)
            if m:
                out[path.parent.parent.name] = m
        return out

    def figure(self, *parts: str) -> str | None:
        path = self.root.joinpath(*parts)
        return str(path.relative_to(self.root)) if path.exists() else None

    def errors(self, exp: str) -> list[str]:
        return self.experiments.get(exp, {}).get("errors", [])


def fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if isinstance(x, (int, float)) else str(x)


@claim("C1")
def exactness_claim(res: Results) -> Row | None:
    paper = "Σλ(v·x)² equals the logit (image) or u·MLP(x) (LM) to float precision"
    errs = []
    for exp in res.experiments:
        for run in res.runs(exp):
            m = res.analysis(exp, run) or {}
            if "exactness_rel_error" in m:
                errs.append((m["exactness_rel_error"], m["exactness_max_abs_error"], f"{exp}/{run}"))
            lm = m.get("lm_exactness") or {}  # u.MLP_l(x) against x^T Q_u x on real mlp_in activations
            if lm.get("applicable"):
                errs.append((lm["rel_error"], lm["max_abs_error"], f"{exp}/{run} (LM, every layer)"))
    for key, m in res.analyses_named("sae", "lowrank").items():  # e_a.MLP(x) for every output SAE feature (E12)
        e = m.get("full_rank_exactness") or {}
        if "rel_error" in e:
            errs.append((e["rel_error"], e["max_abs_error"], f"sae/{key} (LM, every output-SAE feature)"))
    if not errs:
        return None
    worst = max(errs)
    ok = worst[0] <= 1e-4
    return Row("C1", paper, f"worst relative error {worst[0]:.1e} (max abs {worst[1]:.1e}) over {len(errs)} decompositions on real "
               f"test inputs; worst: {worst[2]}", "reproduced" if ok else "NOT reproduced")


@claim("C2")
def accuracy_claim(res: Results) -> Row | None:
    paper = "MNIST about 97.5–98.4%"
    parts, verdict, figs = [], None, []
    for exp, target in (("mnist", (0.975, 0.984)), ("fmnist", None)):
        m = res.train_metrics(exp)
        if not m:
            continue
        parts.append(f"{exp}: test {100 * m['test_acc']:.2f}% (train {100 * m['train_acc']:.2f}%, {m['steps']} steps, "
                     f"{m['seconds_per_epoch']:.2f} s/epoch)")
        if target:
            acc = m["test_acc"]
            verdict = "reproduced" if acc >= target[0] - 0.005 else "NOT reproduced"
            if acc > target[1]:
                verdict = "reproduced (above range)"
        for f in ("eigenvectors/top_eigenvectors.png",):
            p = res.figure(exp, "main", "analysis", f)
            if p:
                figs.append(p)
    if not parts:
        return None
    ref = "5-seed study, MNIST none/wd/noise/both: 97.49/97.49/98.34/98.01%; FMNIST 88.5/87.3/86.8/86.0%"
    return Row("C2", paper, "; ".join(parts), verdict or "see numbers", reference=ref, figures=figs)


def _load_claims() -> None:
    from bilinear.analyses import _load_all

    _load_all()  # analysis modules register their claims on import


def write_report(results_dir: Path) -> Path:
    _load_claims()
    res = Results(results_dir)
    status = res.status
    lines = [
        "# Reproduction report: Bilinear MLPs enable weight-based mechanistic interpretability",
        "",
        f"Profile **{status.get('profile', '?')}** (scale `{status.get('scale', '?')}`), built by `make reproduce"
        f"{'' if status.get('profile') == 'cpu' else ' PROFILE=' + str(status.get('profile'))}` in "
        f"{status.get('experiments', {}).get('_total_seconds', '?')} s (sum over experiments; reused runs cost nothing there, "
        f"while the runs' own training took {status.get('experiments', {}).get('_train_seconds', '?')} s) on {platform.machine()} with "
        f"{status.get('torch_threads', torch.get_num_threads())} torch thread(s) per process, torch {torch.__version__}, no GPU."
        if not torch.cuda.is_available() else f"Profile **{status.get('profile')}** on {torch.cuda.get_device_name()}.",
        "",
        "Every number below comes from the run directories whose `config.yaml` sits next to the figures under this "
        "folder. Input noise is an **absolute per-pixel standard deviation on [0, 1] pixels**, no clipping. "
        "Claim ids refer to PAPER.md §4.",
        "",
        "| Claim | What | Paper's target | Reproduction study | Ours | Verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    rows: list[Row] = []
    for cid in CLAIM_IDS:
        fn = CLAIMS.get(cid)
        row = fn(res) if fn else None
        if row is None:
            row = Row(cid, "", "—", "not run in this profile" if fn else "not implemented yet")
        rows.append(row)
        esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines.append(f"| {cid} | {CLAIM_TITLES[cid]} | {esc(row.paper)} | {esc(row.reference)} | {esc(row.ours)} | {esc(row.verdict)} |")
    lines += ["", "## Details and figures", ""]
    for row in rows:
        if not row.figures and not row.notes:
            continue
        lines += [f"### {row.claim}: {CLAIM_TITLES[row.claim]}", ""]
        if row.notes:
            lines += [row.notes, ""]
        lines += [f"![{row.claim}]({f})" for f in row.figures] + [""]
    lines += ["## Runs", "", "| Experiment | Runs | Status | Seconds (this call) | Training seconds (the runs') | Errors |",
              "| --- | --- | --- | --- | --- | --- |"]
    for exp, st in res.experiments.items():
        if exp.startswith("_"):
            continue
        counts: dict[str, int] = {}
        for s in st.get("runs", {}).values():
            counts[s] = counts.get(s, 0) + 1
        errs = "; ".join(st.get("errors", [])) or "none"
        lines.append(f"| {exp} | {len(st.get('runs', {}))} | {', '.join(f'{v} {k}' for k, v in counts.items())} | "
                     f"{st.get('seconds', '?')} | {st.get('train_seconds', '?')} | {errs.replace('|', '/')} |")
    lines.append("")
    path = results_dir / "REPORT.md"
    checkpoint.write_text(path, "\n".join(lines))
    return path
