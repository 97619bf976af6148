"""Every claim's verdict can fail (issue 12): crafted results/ folders on which each of C1...C17 says "NOT reproduced",
plus the report's rows for failed and unrun experiments, and the one table of paper numbers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bilinear import claims
from bilinear.claims import NOT, Results
from bilinear.claims_table import TABLE, paper, thresholds

ROOT = Path(__file__).resolve().parents[1]


def write(root: Path, rel: str, obj) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


def results(tmp_path: Path, files: dict, experiments: dict | None = None, profile: str = "cpu") -> Results:
    """A results/ folder holding ``files`` ({relative path: json object or text}) and a status.json."""
    root = tmp_path / "results"
    exps = experiments or {rel.split("/")[0]: {"errors": [], "runs": {}} for rel in files}
    write(root, "status.json", {"profile": profile, "scale": profile, "experiments": exps})
    for rel, obj in files.items():
        write(root, rel, obj)
    return Results(root)


def verdict(cid: str, res: Results) -> str:
    row = claims.VERDICTS[cid](res)
    assert row is not None and row.claim == cid
    return row.verdict


# --- C1: a run whose decomposition misses the tolerance ------------------------------------------------


def test_c1_a_failed_exactness_check_is_recorded_and_makes_c1_fail(tiny_mnist_run, tmp_path):
    from conftest import run_cli

    import shutil

    run = tmp_path / "runs" / "mnist" / "main"
    shutil.copytree(tiny_mnist_run, run, ignore=shutil.ignore_patterns("analysis"))
    run_cli("analyze", f"ckpt={run}", "analyses=[spectrum]")  # passes: its numbers are stored
    first = json.loads((run / "analysis" / "metrics.json").read_text())
    assert first["exactness_checks"]["the class logits"]["passed"] is True and "spectrum" in first
    # a tolerance no float computation meets: the check fails, the command stops with one line ...
    proc = run_cli("analyze", f"ckpt={run}", "analyses=[eigenvectors]", "exactness_tol=1e-30", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    assert "does not reproduce the model" in proc.stderr
    # ... and the failure is in metrics.json before the error was raised; no stale pass survives it
    m = json.loads((run / "analysis" / "metrics.json").read_text())
    check = m["exactness_checks"]["the class logits"]
    assert check["passed"] is False and check["tol"] == 1e-30 and check["rel_error"] > 1e-30
    assert m["eigenvectors"]["failed"] is True and "spectrum" in m  # the earlier analysis' metrics are kept
    # C1 counts it and names the run
    res = results(tmp_path, {"mnist/main/analysis/metrics.json": m, "mnist/main/config.yaml": "seed: 0\n"})
    v = verdict("C1", res)
    assert v.startswith(NOT) and "mnist/main" in v and "the class logits" in v


def test_c1_counts_checks_of_every_folder_once_and_fails_on_any(tmp_path):
    ok = {"run": "/r/a", "rel_error": 1e-8, "max_abs_error": 1e-7, "tol": 1e-4, "passed": True}
    bad = {"run": "/r/b", "rel_error": float("nan"), "max_abs_error": None, "tol": 1e-4, "passed": False,
           "error": "/r/b: weights W hold 1 non-finite (NaN/inf) value(s)"}
    res = results(tmp_path, {
        "a/main/analysis/metrics.json": {"exactness_checks": {"the class logits": ok}},
        "sweep/analysis/metrics.json": {"exactness_checks": {"a: the class logits": ok, "b: the class logits": bad}},
    })
    checks = res.exactness_checks()
    assert len(checks) == 2  # run a's check seen twice counts once
    v = verdict("C1", res)
    assert v.startswith(NOT) and "non-finite" in v and "sweep: run b" in v  # a sweep's failing run is named
    assert verdict("C1", results(tmp_path / "ok", {"a/main/analysis/metrics.json": {"exactness_checks": {"x": ok}}})) \
        == "reproduced"


# --- C2-C11: the image claims ---------------------------------------------------------------------------


def image_cfg(noise: float = 0.5, wd: float = 1.0) -> str:
    return f"task:\n  name: mnist\ntrain:\n  noise_std: {noise}\n  weight_decay: {wd}\n  epochs: 100\nseed: 0\n"


def train_metrics(acc: float) -> dict:
    return {"test_acc": acc, "train_acc": acc, "steps": 100, "seconds_per_epoch": 1.0}


def test_c2_judges_mnist_against_the_paper_and_fmnist_against_the_study(tmp_path):
    lo, _ = paper("C2")["mnist_acc"]
    study_both = TABLE["C2"]["reference"]["fmnist"][3]
    slack = thresholds("C2")["slack"]
    files = {"mnist/main/train_metrics.json": train_metrics(lo), "mnist/main/config.yaml": image_cfg(),
             "fmnist/main/train_metrics.json": train_metrics(study_both - 2 * slack), "fmnist/main/config.yaml": image_cfg()}
    v = verdict("C2", results(tmp_path / "a", files))
    assert v.startswith("partly") and "fmnist" in v
    files["mnist/main/train_metrics.json"] = train_metrics(lo - 2 * slack)
    assert verdict("C2", results(tmp_path / "b", files)) == NOT
    # FMNIST is compared with the study's cell of the run's own regularization (here: no weight decay, no noise)
    files = {"fmnist/main/train_metrics.json": train_metrics(TABLE["C2"]["reference"]["fmnist"][0] - 2 * slack),
             "fmnist/main/config.yaml": image_cfg(noise=0.0, wd=0.0)}
    assert verdict("C2", results(tmp_path / "c", files)) == NOT


def test_c3_not_reproduced_when_top_eigenvectors_are_not_class_selective(tmp_path):
    m = {"cos_class_mean_avg": 0.1, "cos_centered_class_mean_avg": 0.1, "fraction_closest_to_own_class": 0.1,
         "selectivity_avg": 1.0, "fraction_most_active_on_own_class": 0.2}
    v = verdict("C3", results(tmp_path, {"mnist/main/analysis/metrics.json": {"eigenvectors": m}}))
    assert v.startswith(NOT)


def spectrum_metrics(rank: float, n_imp: int, d: int = 512) -> dict:
    return {"d_hidden": d, "effective_rank": {"0": rank, "1": rank}, "effective_rank_mean": rank,
            "n_important_positive": {"0": n_imp, "1": n_imp}, "n_important_negative": {"0": n_imp, "1": n_imp}, "shown": {}}


def test_c4_not_reproduced_for_a_full_rank_spectrum(tmp_path):
    v = verdict("C4", results(tmp_path, {"mnist/main/analysis/metrics.json": {"spectrum": spectrum_metrics(400.0, 200)}}))
    assert v == NOT
    ok = verdict("C4", results(tmp_path / "ok", {"mnist/main/analysis/metrics.json": {"spectrum": spectrum_metrics(40.0, 10)}}))
    assert ok == "reproduced"


def test_c5_not_reproduced_when_noise_makes_eigenvectors_worse(tmp_path):
    m = {"noise_std": [0.0, 0.4, 0.8], "weight_decay": 1.0, "effective_pixels": [300, 350, 400], "rare_mass": [0.01, 0.05, 0.1],
         "test_acc": [0.97, 0.97, 0.97], "spearman_effective_pixels_vs_noise": 1.0, "spearman_rare_mass_vs_noise": 1.0,
         "runs": [{"run": "a"}, {"run": "b"}]}
    assert verdict("C5", results(tmp_path, {"overfitting/analysis/metrics.json": {"noise_sweep": m}})) == NOT


def test_c6_not_reproduced_when_every_effect_is_reversed(tmp_path):
    m = {"n_runs": 4, "weight_decay": [0, 1], "noise_std": [0, 1], "effective_pixels_effect_of_noise": 1.0,
         "effective_pixels_effect_of_wd": 50.0, "effective_rank_effect_of_wd": 5.0, "effective_rank_effect_of_noise": 5.0,
         "spearman_rank_vs_wd": 0.5, "spearman_rank_vs_noise": -0.5, "spearman_pixels_vs_noise": 0.5}
    assert verdict("C6", results(tmp_path, {"overfitting/analysis/metrics.json": {"sparsity_grid": m}})) == NOT


def consistency_metrics(strict: float, authors: float, half: float = 0.005) -> dict:
    per = {str(d): {"top1": strict, "top1_lo": strict - half, "top1_hi": strict + half, "n_pairs": 10, "top1_best_match": strict,
                    "top_positive": strict, "most_negative": {"top1": strict},
                    "paper_metric": {"top1": authors, "lo": [authors - half], "hi": [authors + half], "n_pairs": 15,
                                     "n_self_pairs": 5, "confidence": 0.9},
                    "swaps": {"swap_fraction": 0.0, "sign_disagree_fraction": 0.0, "near_equal_ratio": 0.9,
                              "near_equal_fraction": 0.0, "cos_no_swap": strict, "cos_swap": None, "index_matched": strict,
                              "best_match": strict}} for d in (30, 100, 300)}
    return {"consistency": {"per_size": per, "n_vectors": 20, "confidence": 0.9}}


def test_c7_not_reproduced_with_either_metric_when_seeds_disagree(tmp_path):
    lo, _ = paper("C7")["top1_cos"]
    v = verdict("C7", results(tmp_path / "a", {"consistency/analysis/metrics.json": consistency_metrics(lo / 2, lo / 2)}))
    assert v.startswith(NOT) and v.count(NOT) == 2
    # the authors' metric (self-pairs, most negative vector) can pass where the strict one fails: both are said
    v = verdict("C7", results(tmp_path / "b", {"consistency/analysis/metrics.json": consistency_metrics(lo / 2, lo + 0.01)}))
    assert v.startswith("reproduced with the authors' metric") and f"{NOT} with distinct seed pairs" in v
    # an interval that straddles the target's lower end is a tie, said as such: seeds cannot flip the verdict
    v = verdict("C7", results(tmp_path / "c", {"consistency/analysis/metrics.json": consistency_metrics(lo, lo, half=0.05)}))
    assert v.startswith("undecided") and "straddles" in v
    m = consistency_metrics(lo + 0.05, lo + 0.05, half=0.01)
    m["consistency"]["per_size"]["30"]["paper_metric"].update(top1=lo + 0.01, lo=[lo - 0.03], hi=[lo + 0.05])
    v = verdict("C7", results(tmp_path / "d", {"consistency/analysis/metrics.json": m}))
    assert v.startswith("reproduced where resolved (undecided at d30") and "reproduced with distinct seed pairs" in v


def truncation_metrics(acc_k10: float, full: float = 0.98) -> dict:
    acc = [0.1] * 10 + [acc_k10] + [full] * 20  # k = 0..30: recovered only after k = 10
    return {"d_hidden": 512, "acc": acc, "acc_full": full, "acc_model": full, "full_equals_model": True,
            "k_within_0.5pt": 11, "k_within_0.1pt": 11, "drop": [full - a for a in acc]}


def test_c8_is_judged_at_a_handful_of_eigenvectors_not_at_k30(tmp_path):
    k = paper("C8")["k_handful"]
    assert k == 10
    bad = truncation_metrics(0.98 - 2 * thresholds("C8")["drop_partly"])  # full accuracy at k = 30, not at k = 10
    v = verdict("C8", results(tmp_path / "a", {"mnist/main/analysis/metrics.json": {"truncation": bad}}))
    assert v.startswith(NOT) and f"k={k}" in v
    good = truncation_metrics(0.98)
    assert verdict("C8", results(tmp_path / "b", {"mnist/main/analysis/metrics.json": {"truncation": good}})) == "reproduced"


def casper_metrics(l1: float, l2: float, corr: float) -> dict:
    return {"lambda_1": l1, "lambda_2": l2, "lambda1_over_abs_lambda2": l1 / abs(l2), "top_is_positive": l1 > 0,
            "abs_corr_top_vs_target": corr, "abs_cos_top_vs_target_minus_complement": corr,
            "abs_cos_uniform_vs_target_minus_complement": 0.8, "top_positive_lambda": max(l1, l2),
            "second_positive_lambda": min(abs(l1), abs(l2)) / 10, "top_positive_rank_by_magnitude": 1,
            "abs_corr_top_positive_vs_target": corr, "frac_true_train": 0.5, "frac_true_test": 0.5, "test_acc": 0.97,
            "target_index": 6, "threshold": 0.4}


def gates_metrics(deviation: float) -> dict:
    return {"per_gate": {"and": {"mean_self": 0.0, "mean_cross": 0.5, "expected_self": 0, "expected_cross": 0.5,
                                 "max_deviation": deviation}}}


def test_c9_firm_verdict_from_casper_and_gates(tmp_path):
    good_casper = {"casper/main/analysis/metrics.json": {"casper": casper_metrics(1.0, 0.1, 0.9)}}
    good_gates = {"gates/main/analysis/metrics.json": {"gates": gates_metrics(0.001)}}
    assert verdict("C9", results(tmp_path / "ok", {**good_casper, **good_gates})) == "reproduced"
    # the largest |lambda| negative and no dominant one (what the cpu profile found): NOT reproduced, not "partly"
    v = verdict("C9", results(tmp_path / "neg", {"casper/main/analysis/metrics.json": {"casper": casper_metrics(-0.61, 0.545, 0.17)},
                                                 **good_gates}))
    assert v.startswith(NOT) and "negative" in v and "dominant" in v
    # a correct Casper model does not rescue gates whose interactions are wrong
    v = verdict("C9", results(tmp_path / "gates", {**good_casper, "gates/main/analysis/metrics.json": {"gates": gates_metrics(0.5)}}))
    assert v.startswith(NOT) and "gates" in v


def adversarial_metrics(separated: bool) -> dict:
    variant = {"mask_acc_mean": [0.98, 0.9], "mask_acc_ci95": [0.0, 0.01], "baseline_acc_mean": [0.98, 0.9],
               "baseline_acc_ci95": [0.0, 0.01], "mask_target_mean": [0.0, 0.05], "baseline_target_mean": [0.0, 0.05],
               "separated_at_max_strength": separated}
    return {"adversarial": {"strengths": [0.0, 0.3], "clean_test_acc": 0.98, "dense": variant, "edge": variant, "n_stack": 10,
                            "pinv_max_abs_offdiag": 0.0, "pinv_max_abs_diag_error": 0.0, "n_eval": 100, "top": 3,
                            "quadratic_identity_rel_error": 0.0}}


def test_c10_not_reproduced_when_masks_do_no_better_than_their_baselines(tmp_path):
    files = {f"adversarial/{r}/analysis/metrics.json": adversarial_metrics(False) for r in ("dense_model", "edge_model")}
    assert verdict("C10", results(tmp_path, files)) == NOT


def test_c11_not_reproduced_when_direction_1_mixes_vertical_and_horizontal(tmp_path):
    contrib = {str(c): 0.0 for c in range(10)}
    contrib.update({"1": 0.5, "4": -0.4, "7": 0.1, "5": 0.3})
    m = {"directions": [{"class_contributions": contrib}], "energy_fraction": [0.2], "reconstruction_rel_error": 1e-12}
    assert verdict("C11", results(tmp_path, {"mnist/main/analysis/metrics.json": {"hosvd": m}})) == NOT


# --- C12-C17: the language claims ----------------------------------------------------------------------


def test_c12_not_reproduced_when_no_pair_is_tied_to_the_rule(tmp_path):
    m = {"layer": 0, "pair": [1, 2], "decoder_cosine": -0.5, "n_rule_positions": {"pos": 40, "neg": 40},
         "tied_to_rule": {"tied": False, "output_types": ["a", "b"]}}
    assert verdict("C12", results(tmp_path, {"sae/layer0/analysis/metrics.json": {"negation": m}})) == NOT


def test_c13_not_reproduced_for_high_rank_features(tmp_path):
    fr = {"0.4": 0.1, "0.5": 0.05, "0.6": 0.02, "0.75": 0.01}
    m = {"ks": [1, 2, 8], "mean_corr": [0.1, 0.2, 0.3], "mean_corr_k2": 0.2, "fraction_above_k2": fr, "n_features_kept": 50,
         "layer": 1, "sae": "/x/sae", "n_sequences": 8, "n_positions": 100, "min_active": 10}
    assert verdict("C13", results(tmp_path, {"sae/layer1/analysis/metrics.json": {"lowrank": m}})) == NOT


def test_c14_not_reproduced_when_correlation_falls_and_nmse_moves(tmp_path):
    rows = [{"tokens_multiple": x, "top2_corr_mean": c, "nmse": n, "loss_recovered": 0.9}
            for x, c, n in ((1, 0.5, 0.3), (2, 0.4, 0.1), (4, 0.3, 0.05))]
    assert verdict("C14", results(tmp_path, {"e13/analysis/metrics.json": {"sae_training_length": {"rows": rows}}})) == NOT


def sae_rows(la_in: float, la_out: float) -> list[dict]:
    return [{"site": s, "layer": 0, "loss_added": la, "nmse": 0.1, "loss_recovered": 0.9, "dead_fraction": 0.0}
            for s, la in (("mlp_in", la_in), ("mlp_out", la_out))]


def test_c15_fails_above_fig23_and_calls_a_difference_within_its_spread_a_tie(tmp_path):
    ceiling = max(max(v) for v in paper("C15")["loss_added"].values())
    m = {"rows": sae_rows(2 * ceiling, ceiling), "paired": {"0": {"diff": ceiling, "se": 0.001}}}
    assert verdict("C15", results(tmp_path / "a", {"sae/analysis/metrics.json": {"sae_quality": m}})).startswith(NOT)
    # mlp_in 0.0021 vs mlp_out 0.0022 (the case) with a standard error of 0.0005: neither order is claimed
    m = {"rows": sae_rows(0.0021, 0.0022), "paired": {"0": {"diff": -0.0001, "se": 0.0005}}}
    v = verdict("C15", results(tmp_path / "b", {"sae/analysis/metrics.json": {"sae_quality": m}}))
    assert v.startswith("undecided") and "tie" in v
    m = {"rows": sae_rows(0.0021, 0.0042), "paired": {"0": {"diff": -0.0021, "se": 0.0001}}}
    assert verdict("C15", results(tmp_path / "c", {"sae/analysis/metrics.json": {"sae_quality": m}})).startswith("partly")


def gated(gap: float, lo: float, hi: float) -> dict:
    loss = {"bilinear": 1.0 + gap, "reglu": 1.0, "swiglu": 1.0}
    return {"gated_comparison": {
        "claim": "C16", "details": {"equal_tokens": {"val_loss": loss, "bilinear_rel_gap_to_best_gated": gap}},
        "calibration": {"rounds": 3, "device": "cpu", "ratio_to_bilinear": {"reglu": {"median": 0.9, "min": 0.85, "max": 0.95}}},
        "equal_time_calibrated": {"loss": loss, "gap": gap, "gap_lo": lo, "gap_hi": hi, "extrapolated": {"reglu": False}}}}


def test_c16_uses_the_calibrated_equal_time_gap_and_does_not_flip_within_its_spread(tmp_path):
    tol = thresholds("C16")["tolerance"]
    v = verdict("C16", results(tmp_path / "a", {"stories/analysis/metrics.json": gated(3 * tol, 2 * tol, 4 * tol)}))
    assert v.startswith(NOT)
    v = verdict("C16", results(tmp_path / "b", {"stories/analysis/metrics.json": gated(tol, tol / 2, 2 * tol)}))
    assert v.startswith("undecided")
    assert verdict("C16", results(tmp_path / "c", {"stories/analysis/metrics.json": gated(0.0, -tol / 2, tol / 2)})) == "holds"


def beta(gap: float) -> dict:
    run = {"task": "stories", "tokens": 1000, "beta_start": 1.0, "beta_anneal_fraction": 0.3, "val_loss": 1.0 + gap,
           "lr": 1e-3, "train_seconds": 1.0}
    return {"beta_annealing": {"claim": "C17", "gap": gap, "rel_gap": gap, "annealed": run,
                               "baseline": {**run, "val_loss": 1.0}, "exactness": {"rel_error": 1e-7, "per_layer_rel_error": {"0": 1e-7}}}}


@pytest.mark.parametrize("scale, reproduced", [(1.0, True), (1 / 25, False), (6.0, False), (-1.0, False)])
def test_c17_not_reproduced_when_the_gap_is_far_from_the_papers_either_way(tmp_path, scale, reproduced):
    v = verdict("C17", results(tmp_path, {"e15/analysis/metrics.json": beta(scale * paper("C17")["gap"])}))
    assert (v == "reproduced") == reproduced and (v.startswith(NOT) != reproduced)


def test_every_claim_has_a_verdict_and_a_not_reproduced_test():
    assert set(claims.VERDICTS) == set(TABLE) == {f"C{i}" for i in range(1, 18)}
    text = Path(__file__).read_text()
    for i in range(1, 18):
        assert re.search(rf"def test_c{i}_", text), f"no NOT-reproduced test for C{i}"


# --- the report ----------------------------------------------------------------------------------------


def test_report_says_failed_with_the_error_and_names_settings(tmp_path):
    from bilinear.report import write_report

    exps = {"consistency": {"errors": ["train d_hidden-30_seed-0: error: CUDA out of memory"], "runs": {"d_hidden-30_seed-0": "failed"}},
            "mnist": {"errors": [], "runs": {"main": "trained"}}}
    res = results(tmp_path, {"mnist/main/train_metrics.json": train_metrics(0.98), "mnist/main/config.yaml": image_cfg()},
                  experiments=exps)
    text = write_report(res.root).read_text()
    c7 = next(line for line in text.splitlines() if line.startswith("| C7 |"))
    assert "FAILED" in c7 and "CUDA out of memory" in c7 and "not run in this profile" not in c7
    c2 = next(line for line in text.splitlines() if line.startswith("| C2 |"))
    assert "profile cpu, scale cpu" in c2 and "noise_std 0.5" in c2 and "epochs 100" in c2
    c12 = next(line for line in text.splitlines() if line.startswith("| C12 |"))
    assert "not run in this profile" in c12


def test_paper_profile_names_what_the_language_experiments_need(tmp_path):
    from bilinear.report import write_report

    res = results(tmp_path, {"mnist/main/train_metrics.json": train_metrics(0.98), "mnist/main/config.yaml": image_cfg()},
                  experiments={"mnist": {"errors": [], "runs": {"main": "trained"}}}, profile="paper")
    text = write_report(res.root).read_text()
    for cid in ("C12", "C13", "C14", "C15", "C16", "C17"):
        line = next(x for x in text.splitlines() if x.startswith(f"| {cid} |"))
        assert "needs a GPU and the TinyStories data" in line, line


def test_report_imports_no_analysis():
    code = "import sys, bilinear.report; print(any(m.startswith('bilinear.analyses') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    assert out.stdout.strip() == "False"


def test_each_paper_number_is_written_once_in_the_code():
    """Distinctive numbers of the table (three or more significant digits) appear in no other source file."""
    numbers = set()

    def collect(x):
        if isinstance(x, float):
            numbers.add(repr(x))
        elif isinstance(x, dict):
            for v in x.values():
                collect(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                collect(v)

    for spec in TABLE.values():
        collect(spec["paper"])
        collect(spec.get("reference", {}))
    distinctive = {n for n in numbers if len(n.replace("0.", "").lstrip("0").replace(".", "")) >= 3}
    assert len(distinctive) > 20
    table = ROOT / "src" / "bilinear" / "claims_table.py"
    for path in (ROOT / "src").rglob("*.py"):
        if path == table:
            continue
        text = path.read_text()
        found = [n for n in distinctive if re.search(rf"(?<![\d.]){re.escape(n)}(?!\d)", text)]
        assert not found, f"{path.relative_to(ROOT)} writes the paper's number(s) {found}: read them from claims_table"


def test_language_claims_judge_each_track_on_its_own(tmp_path):
    """The stories and natural-text tracks (issue 13) each get their verdict; a failing one is not hidden by the other."""
    tol = thresholds("C16")["tolerance"]
    res = results(tmp_path, {"stories/analysis/metrics.json": gated(0.0, -tol / 2, tol / 2),
                             "text/analysis/metrics.json": gated(3 * tol, 2 * tol, 4 * tol)})
    v = verdict("C16", res)
    assert v.startswith("stories: holds; text: NOT reproduced")
    # C12 on a corpus without the planted rule is reported, not judged against a rule that is not there
    m = {"layer": 0, "pair": [1, 2], "decoder_cosine": -0.9, "n_rule_positions": {"pos": 0, "neg": 0},
         "tied_to_rule": {"tied": False, "output_types": ["mixed", "mixed"]}}
    assert verdict("C12", results(tmp_path / "t", {"text_sae/layer0/analysis/metrics.json": {"negation": m}})).startswith("not judged")


def test_similarity_view_beside_c7_reads_the_weight_cosines(tmp_path):
    """Issue 17: the weight-only seed similarity is reported beside C7, with the eigenvector |cos| of the same size."""
    import json as _json

    from bilinear.claims import Results, similarity_view

    (tmp_path / "consistency" / "analysis").mkdir(parents=True)
    (tmp_path / "status.json").write_text(_json.dumps({"profile": "tiny", "scale": "tiny", "experiments": {"consistency": {}}}))
    sim = {"seed_pair_by_value": {"30": 0.789, "50": 0.838},
           "eigenvector_cosines_between_seeds": {"d_hidden=30": {"top1": 0.58, "top_positive": 0.78}}}
    (tmp_path / "consistency" / "analysis" / "metrics.json").write_text(_json.dumps({"similarity": sim}))
    [note] = similarity_view(Results(tmp_path), "consistency")
    assert "30: 0.789 (eigenvector |cos|: top by |λ| 0.58, top positive 0.78)" in note and "50: 0.838" in note
    (tmp_path / "consistency" / "analysis" / "metrics.json").write_text("{}")
    assert similarity_view(Results(tmp_path), "consistency") == []


def test_a_claim_whose_experiment_is_in_the_profile_but_not_yet_run_says_so(tmp_path):
    import json as _json

    from bilinear.claims import Results, evaluate

    (tmp_path / "status.json").write_text(_json.dumps({"profile": "paper", "scale": "paper", "experiments": {}}))
    (tmp_path / "profile.yaml").write_text("scale: paper\nexperiments:\n  mnist: {}\n  fmnist: {}\n")
    row = next(r for r in evaluate(Results(tmp_path)) if r.claim == "C2")
    assert row.verdict.startswith("not run yet: mnist, fmnist")
    (tmp_path / "profile.yaml").write_text("scale: paper\nexperiments:\n  casper: {}\n")
    row = next(r for r in evaluate(Results(tmp_path)) if r.claim == "C2")
    assert row.verdict == "not run in this profile"


def test_c1_does_not_count_a_nested_profiles_checks(tmp_path):
    """results/paper/ sits inside results/: the cpu report's C1 must not count the paper profile's decompositions."""
    import json as _json

    from bilinear.claims import Results

    check = {"run": "x", "rel_error": 1e-7, "max_abs_error": 1e-6, "tol": 1e-4, "passed": True}
    for root in (tmp_path, tmp_path / "paper"):
        (root / "mnist" / "main" / "analysis").mkdir(parents=True)
        (root / "status.json").write_text(_json.dumps({"profile": "p", "scale": "s", "experiments": {}}))
        (root / "mnist" / "main" / "analysis" / "metrics.json").write_text(
            _json.dumps({"exactness_checks": {f"{root.name}: logits": {**check, "run": str(root / "mnist" / "main")}}}))
    assert len(Results(tmp_path).exactness_checks()) == 1
    assert len(Results(tmp_path / "paper").exactness_checks()) == 1
