"""results/REPORT.md from the collected metrics and PAPER.md's targets (the claims checklist, §4).

The verdicts live in ``bilinear.claims`` (one function per claim, reading results/ through ``claims.Results``) and the
paper's numbers in ``bilinear.claims_table``; this module only lays their rows out, with the runs table beside them.
It imports no analysis, so the report can be rebuilt from results/ alone.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from bilinear import checkpoint
from bilinear.claims import Results, Row, evaluate  # noqa: F401 - Results is this module's API too
from bilinear.claims_table import TABLE

CLAIM_TITLES = {cid: spec["title"] for cid, spec in TABLE.items()}


def write_report(results_dir: Path) -> Path:
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
        "folder; the Settings column names the profile, scale and run settings of each row. Input noise is an **absolute "
        "per-pixel standard deviation on [0, 1] pixels**, no clipping. Claim ids refer to PAPER.md §4; the paper's numbers "
        "and our verdict thresholds are in `src/bilinear/claims_table.py`.",
        "",
        "| Claim | What | Paper's target | Reproduction study | Ours | Verdict | Settings |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows: list[Row] = evaluate(res)
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    for row in rows:
        lines.append(f"| {row.claim} | {CLAIM_TITLES[row.claim]} | {esc(row.paper)} | {esc(row.reference)} | {esc(row.ours)} | "
                     f"{esc(row.verdict)} | {esc(row.settings)} |")
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
