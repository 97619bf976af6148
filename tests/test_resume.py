"""Resume that cannot drift (issue 11): checkpoints are transactions, a resume must match its run, a finished
run is never retrained, and a kill at any write boundary of a checkpoint resumes to bitwise-identical weights.

Runs are scale=tiny MNIST on fixture data: 4 epochs of 2 steps, evaluated every epoch (steps 2, 4, 6, 8),
checkpointed every 3 steps (3 and 6), so the checkpoint at step 3 falls inside an evaluation window.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bilinear import checkpoint, rundir
from conftest import ROOT

BASE = ["task=mnist", "scale=tiny", "train.progress=false", "train.epochs=4", "train.checkpoint_every=3"]
KILL_STEP = 6  # the second checkpoint: a kill before its commit falls back to the one at step 3


def train(data_root: Path, run_dir: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop(rundir.KILL_ENV, None)
    if kill_at:
        env[rundir.KILL_ENV] = kill_at
    return subprocess.run([sys.executable, "-m", "train", *BASE, f"data_root={data_root}", f"hydra.run.dir={run_dir}",
                           *args], cwd=ROOT, capture_output=True, text=True, env=env)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode not in (0, -signal.SIGKILL), proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n.lower() in errors[0].lower(), errors[0]
    return errors[0]


def history(run: Path, drop=("train_seconds",)) -> list[list[str]]:
    """history.csv's header and rows, without the wall-clock columns (the only ones a resume may change)."""
    with open(run / checkpoint.HISTORY) as f:
        rows = list(csv.reader(f))
    keep = [i for i, name in enumerate(rows[0]) if name not in drop]
    return [[row[i] for i in keep] for row in rows]


@pytest.fixture(scope="module")
def reference(fixture_data_root, tmp_path_factory) -> Path:
    """The uninterrupted run every resumed run must equal, bit for bit."""
    run = tmp_path_factory.mktemp("resume") / "reference"
    ok(train(fixture_data_root, run))
    return run


@pytest.fixture(scope="module")
def stopped(fixture_data_root, tmp_path_factory) -> Path:
    """An unfinished run: stopped (with a checkpoint) after 3 of its 8 steps. Tests copy it before resuming."""
    run = tmp_path_factory.mktemp("resume") / "stopped"
    ok(train(fixture_data_root, run, "+train.stop_after_steps=3"))
    return run


def copy(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns(rundir.RUN_LOCK))
    return dst


def assert_same_weights(a: Path, b: Path) -> None:
    assert (a / checkpoint.WEIGHTS).read_bytes() == (b / checkpoint.WEIGHTS).read_bytes()


# --- the crash-point test ---------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["before_weights", "after_weights", "after_state", "after_manifest"])
def test_a_kill_at_every_write_boundary_of_a_checkpoint_resumes_to_identical_weights(
        fixture_data_root, reference, tmp_path, point):
    run = tmp_path / "run"
    killed = train(fixture_data_root, run, kill_at=f"{point}@{KILL_STEP}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr  # the kill point was reached
    manifest = checkpoint.read_manifest(run)
    expected = KILL_STEP if point == "after_manifest" else 3  # the new checkpoint, or the old one
    assert manifest["checkpoint"]["step"] == expected and not manifest["complete"]
    ok(train(fixture_data_root, run, "train.resume=true"))
    assert_same_weights(run, reference)
    assert history(run) == history(reference)
    assert not (run / rundir.CHECKPOINTS).exists(), "a finished run keeps no checkpoint files"
    assert checkpoint.is_complete(run) and checkpoint.verify_files(run)


@pytest.mark.parametrize("point", ["final_after_weights", "final_after_metrics", "final_after_manifest"])
def test_a_kill_while_committing_the_final_weights_leaves_a_resumable_or_finished_run(
        fixture_data_root, reference, tmp_path, point):
    run = tmp_path / "run"
    assert train(fixture_data_root, run, kill_at=point).returncode == -signal.SIGKILL
    if point == "final_after_manifest":  # committed: finished, and a resume is refused
        assert checkpoint.is_complete(run)
        one_line_error(train(fixture_data_root, run, "train.resume=true"), "already holds a finished run")
    else:  # metrics.json may already say complete, but the manifest (the commit) does not: unfinished
        assert not checkpoint.is_complete(run)
        ok(train(fixture_data_root, run, "train.resume=true"))
    assert_same_weights(run, reference)
    assert checkpoint.verify_files(run)


def test_a_kill_while_a_resume_rewrites_config_yaml_leaves_it_resumable(fixture_data_root, reference, stopped, tmp_path):
    """A resume rewrites config.yaml (train.resume changed) before its first commit; a kill right after must
    not leave a manifest that calls the new config.yaml corrupt."""
    run = copy(stopped, tmp_path / "run")
    assert train(fixture_data_root, run, "train.resume=true", kill_at="after_config").returncode == -signal.SIGKILL
    ok(train(fixture_data_root, run, "train.resume=true"))
    assert_same_weights(run, reference)
    assert checkpoint.verify_files(run)


def test_train_state_records_the_step_and_hash_of_its_weights(stopped):
    ck = checkpoint.read_manifest(stopped)["checkpoint"]
    state = checkpoint.load_train_state(stopped / ck["state"])
    assert state["step"] == ck["step"] == 3
    assert state["weights_sha256"] == checkpoint.file_sha256(stopped / ck["weights"])


def test_a_state_from_another_step_is_refused(fixture_data_root, stopped, tmp_path):
    """Weights and state are tied by hash: a state copied in from elsewhere (with its manifest entry patched to
    match, as a careless repair would) cannot meet the wrong weights."""
    run = copy(stopped, tmp_path / "run")
    manifest = checkpoint.read_manifest(run)
    ck = manifest["checkpoint"]
    state = checkpoint.load_train_state(run / ck["state"])
    state["weights_sha256"] = "0" * 64
    torch.save(state, run / ck["state"])
    manifest["files"][ck["state"]] = checkpoint.file_sha256(run / ck["state"])
    checkpoint.write_json(run / checkpoint.MANIFEST, manifest)
    one_line_error(train(fixture_data_root, run, "train.resume=true"), "step-00000003.pt", "belongs to")


# --- history after a resume -------------------------------------------------------------------------------


def test_history_after_resume_equals_an_uninterrupted_runs(fixture_data_root, reference, stopped, tmp_path):
    """The stop at step 3 falls inside the second evaluation window (steps 3-4): that row's train loss must
    still average both of its steps, the columns keep their order, and no history.json is left behind."""
    run = copy(stopped, tmp_path / "run")
    ok(train(fixture_data_root, run, "train.resume=true"))
    assert history(run) == history(reference)
    assert not (run / checkpoint.LEGACY_HISTORY).exists()
    assert_same_weights(run, reference)


def test_a_checkpoint_written_before_transactions_still_resumes(fixture_data_root, reference, stopped, tmp_path):
    """The layout older code wrote (train_state.pt + model.safetensors + history.json, no manifest) resumes,
    with a note that it is unverified; its files are replaced by the new layout."""
    run = copy(stopped, tmp_path / "run")
    ck = checkpoint.read_manifest(run)["checkpoint"]
    state = checkpoint.load_train_state(run / ck["state"])
    torch.save({k: state[k] for k in ("optimizer", "scheduler", "step", "train_seconds")}, run / checkpoint.TRAIN_STATE)
    shutil.copyfile(run / ck["weights"], run / checkpoint.WEIGHTS)
    checkpoint.write_json(run / checkpoint.LEGACY_HISTORY, state["history"])
    shutil.rmtree(run / rundir.CHECKPOINTS)
    (run / checkpoint.MANIFEST).unlink()
    proc = ok(train(fixture_data_root, run, "train.resume=true"))
    assert "unverified" in proc.stdout + proc.stderr  # logged (console and train.log)
    assert_same_weights(run, reference)
    assert not (run / checkpoint.TRAIN_STATE).exists() and not (run / checkpoint.LEGACY_HISTORY).exists()
    assert history(run)[0] == history(reference)[0], "column order"


# --- a resume must match ----------------------------------------------------------------------------------


@pytest.mark.parametrize("override, key", [("train.lr=0.01", "train.lr"), ("seed=5", "seed"),
                                           ("model.d_hidden=48", "model.d_hidden"),
                                           ("train.noise_std=0.1", "train.noise_std")])
def test_a_resume_with_another_config_is_refused_before_anything_is_written(fixture_data_root, stopped, tmp_path,
                                                                            override, key):
    run = copy(stopped, tmp_path / "run")
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and ".hydra" not in p.parts}
    line = one_line_error(train(fixture_data_root, run, "train.resume=true", override), key, "differs")
    assert "train.epochs" in line, "the message says what a resume may change"
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and ".hydra" not in p.parts}
    after.pop(Path(rundir.RUN_LOCK), None)
    assert after == before, "a refused resume writes nothing (config.yaml included)"


def test_a_resume_may_extend_the_run(fixture_data_root, stopped, tmp_path):
    run = copy(stopped, tmp_path / "run")
    ok(train(fixture_data_root, run, "train.resume=true", "train.epochs=5", "train.checkpoint_every=0"))
    assert json.loads((run / checkpoint.METRICS).read_text())["steps"] == 10
    assert checkpoint.load_config(run).train.epochs == 5, "config.yaml describes the run as it ended"
    assert [s["from_step"] for s in checkpoint.read_manifest(run)["sessions"]] == [0, 3]


def test_a_resume_may_not_shorten_the_run_below_its_checkpoint(fixture_data_root, stopped, tmp_path):
    run = copy(stopped, tmp_path / "run")
    one_line_error(train(fixture_data_root, run, "train.resume=true", "train.epochs=1"), "before the checkpoint")


def test_resume_of_a_finished_run_is_refused_and_keeps_it(fixture_data_root, reference, tmp_path):
    run = copy(reference, tmp_path / "run")
    weights = (run / checkpoint.WEIGHTS).read_bytes()
    one_line_error(train(fixture_data_root, run, "train.resume=true"), "already holds a finished run")
    one_line_error(train(fixture_data_root, run), "already holds a finished run")
    assert (run / checkpoint.WEIGHTS).read_bytes() == weights


def test_resume_without_a_run_dir_is_refused(fixture_data_root, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train", *BASE, f"data_root={fixture_data_root}", "train.resume=true"],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    one_line_error(proc, "hydra.run.dir")
    started = [p for p in tmp_path.rglob(checkpoint.CONFIG) if ".hydra" not in p.parts]  # .hydra/ is Hydra's own
    assert not started, "nothing started in the default folder"


def test_resume_of_a_folder_without_a_run_is_refused(fixture_data_root, tmp_path):
    one_line_error(train(fixture_data_root, tmp_path / "empty", "train.resume=true"), "no run to resume")


def test_a_fresh_start_over_an_unfinished_checkpoint_is_refused(fixture_data_root, stopped, tmp_path):
    run = copy(stopped, tmp_path / "run")
    one_line_error(train(fixture_data_root, run), "unfinished run checkpointed at step 3", "train.resume=true")
    assert checkpoint.read_manifest(run)["checkpoint"]["step"] == 3


# --- divergence -------------------------------------------------------------------------------------------


def test_a_diverging_run_keeps_a_checkpoint_that_does_not_diverge(fixture_data_root, tmp_path):
    """lr warming up towards 300: the run learns for a while, blows up (losses of 1e35 with finite weights),
    then overflows. The checkpoint kept must be one whose weights still give a sane loss; the last one with
    finite weights (what a finiteness check alone keeps) would diverge at once on resume."""
    from bilinear.tasks.image import ImageTask, evaluate_classifier

    run = tmp_path / "run"
    proc = train(fixture_data_root, run, "train.lr=300", "train.warmup_steps=3000", "train.epochs=40",
                 "train.checkpoint_every=1")
    one_line_error(proc, "non-finite", "last good checkpoint")
    kept = run / checkpoint.read_manifest(run)["checkpoint"]["weights"]
    task = ImageTask(checkpoint.load_config(run), torch.device("cpu"))
    checkpoint.load_weights(kept, task.model)
    loss = evaluate_classifier(task.model, task.data.train_x, task.data.train_y)["loss"]
    assert loss < 50, f"the kept checkpoint's loss is {loss:.3g} (chance is 2.3): it would diverge at once on resume"
    assert "no checkpoint at step" in proc.stdout + proc.stderr, "a skipped checkpoint is reported"
    assert "no checkpoint at step" in (run / "train.log").read_text(), "and recorded with the run"


# --- what decides the last bits of the weights is recorded ---------------------------------------------------


def test_the_run_records_threads_device_torch_and_code(reference):
    manifest = checkpoint.read_manifest(reference)
    (session,) = manifest["sessions"]
    assert session["torch_threads"] >= 1 and session["device"] == "cpu" and session["torch"] == torch.__version__
    assert manifest["code"]["git_commit"] or manifest["code"]["package"]
    assert manifest["step"] == 8 and manifest["complete"] is True
    assert "train.epochs=4" in session["overrides"]


def test_weights_in_a_manifest_are_what_is_on_disk(reference):
    files = checkpoint.read_manifest(reference)["files"]
    assert set(files) == {checkpoint.CONFIG, checkpoint.WEIGHTS, checkpoint.HISTORY, checkpoint.METRICS}
    for name, digest in files.items():
        assert checkpoint.file_sha256(reference / name) == digest, name
    assert load_file(str(reference / checkpoint.WEIGHTS))  # and the file is a plain safetensors file
