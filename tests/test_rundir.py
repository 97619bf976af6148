"""The run directory as a database (issue 11): the manifest every loader verifies, one writer per folder,
durable atomic writes, unique default folders."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import stat
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from bilinear import checkpoint, rundir
from bilinear.errors import CheckpointError
from conftest import ROOT, run_cli


def flip_payload_byte(path: Path) -> None:
    """Flip one bit of the last tensor byte: the header still parses and every shape still matches, so only
    a hash can tell."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def one_line_error(proc, *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n.lower() in errors[0].lower(), errors[0]
    return errors[0]


# --- the manifest -----------------------------------------------------------------------------------------


def test_analyze_catches_a_flipped_payload_byte_in_the_weights(tiny_mnist_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_mnist_run, run, ignore=shutil.ignore_patterns("analysis"))
    flip_payload_byte(run / checkpoint.WEIGHTS)
    line = one_line_error(run_cli("analyze", f"ckpt={run}", "analyses=[spectrum]", check=False),
                          checkpoint.WEIGHTS, "manifest.json")
    assert str(run / checkpoint.WEIGHTS) in line, "the error names the file"


def test_every_loader_verifies_the_weights_it_reads(tiny_mnist_run, tmp_path):
    """saes=, lm=, train.init_from and analyze all load through checkpoint.load_weights."""
    from hydra.utils import instantiate

    run = tmp_path / "run"
    shutil.copytree(tiny_mnist_run, run, ignore=shutil.ignore_patterns("analysis"))
    model = instantiate(OmegaConf.load(run / checkpoint.CONFIG).model)
    checkpoint.load_weights(run / checkpoint.WEIGHTS, model)  # intact: loads
    flip_payload_byte(run / checkpoint.WEIGHTS)
    with pytest.raises(CheckpointError, match="differs from .* recorded in manifest.json"):
        checkpoint.load_weights(run / checkpoint.WEIGHTS, model)


def test_a_changed_config_or_metrics_is_caught_naming_the_file(tiny_mnist_run, tmp_path):
    for name, edit in ((checkpoint.CONFIG, lambda t: t.replace("seed: 0", "seed: 1")),
                       (checkpoint.METRICS, lambda t: t.replace('"complete": true', '"complete": true ')),
                       (checkpoint.HISTORY, lambda t: t + "\n")):
        run = tmp_path / name
        shutil.copytree(tiny_mnist_run, run, ignore=shutil.ignore_patterns("analysis"))
        path = run / name
        path.write_text(edit(path.read_text()))
        with pytest.raises(CheckpointError, match=re.escape(str(path))):
            checkpoint.load_config(run)


def test_a_missing_listed_file_and_an_unlisted_weights_file_are_refused(tiny_mnist_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_mnist_run, run, ignore=shutil.ignore_patterns("analysis"))
    (run / checkpoint.HISTORY).unlink()
    with pytest.raises(CheckpointError, match="history.csv: missing"):
        checkpoint.load_config(run)
    manifest = checkpoint.read_manifest(tiny_mnist_run)
    del manifest["files"][checkpoint.WEIGHTS]
    with pytest.raises(CheckpointError, match="not recorded in"):
        checkpoint.verify_files(run, [checkpoint.WEIGHTS], manifest)


def test_a_run_written_before_manifests_still_loads_unverified(tiny_mnist_run, tmp_path, caplog):
    run = tmp_path / "old"
    shutil.copytree(tiny_mnist_run, run, ignore=shutil.ignore_patterns("analysis"))
    (run / checkpoint.MANIFEST).unlink()
    assert checkpoint.verification(run) == "unverified"
    assert checkpoint.is_complete(run)
    assert "unverified" in caplog.text
    proc = run_cli("analyze", f"ckpt={run}", "analyses=[spectrum]")
    assert "unverified" in proc.stdout and proc.stdout.strip().splitlines()[-1] == str(run / "analysis")
    assert checkpoint.verification(tiny_mnist_run) == "verified"


def test_an_unreadable_manifest_is_one_line(tiny_mnist_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_mnist_run, run, ignore=shutil.ignore_patterns("analysis"))
    (run / checkpoint.MANIFEST).write_text("{not json")
    one_line_error(run_cli("analyze", f"ckpt={run}", "analyses=[spectrum]", check=False), "manifest.json")


# --- one writer per run folder -----------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    with rundir.writer_lock(tmp_path):
        with pytest.raises(rundir.RunLockedError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            with rundir.writer_lock(tmp_path):
                pass
    with rundir.writer_lock(tmp_path):  # released: the next writer gets it
        pass


def test_train_into_a_folder_another_training_writes_is_refused(fixture_data_root, tmp_path):
    """Two trainings given one hydra.run.dir used to both exit 0 and leave a chimera."""
    run = tmp_path / "run"
    with rundir.writer_lock(run):
        proc = run_cli("train", "task=mnist", "scale=tiny", "train.progress=false", f"data_root={fixture_data_root}",
                       f"hydra.run.dir={run}", check=False)
    one_line_error(proc, "being written by another training", f"pid {os.getpid()}")
    assert not (run / checkpoint.CONFIG).exists() and not (run / checkpoint.WEIGHTS).exists()


def test_the_writer_lock_never_waits(tmp_path):
    """flock without LOCK_NB would block here forever; the test would hang instead of failing, so the refusal
    itself is the assertion (a lock that waited could never raise)."""
    with rundir.writer_lock(tmp_path), pytest.raises(rundir.RunLockedError):
        with rundir.writer_lock(tmp_path):
            pass


# --- durable, umask-respecting writes --------------------------------------------------------------------------


def test_atomic_writes_fsync_the_file_and_the_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    checkpoint.write_text(tmp_path / "a.txt", "x")
    assert synced == [False, True], "the file's bytes, then the folder's entry"


def test_write_bytes_returns_the_hash_of_what_it_wrote(tmp_path):
    digest = checkpoint.write_bytes(tmp_path / "b.bin", b"payload")
    assert digest == checkpoint.file_sha256(tmp_path / "b.bin")


# --- config comparison for resume -----------------------------------------------------------------------------


def test_config_differences_ignore_only_the_allow_list():
    stored = {"seed": 0, "device": "auto", "train": {"lr": 1e-3, "epochs": 2, "progress": True, "betas": [0.9, 0.99]},
              "logger": {"name": "none"}, "model": {"d_hidden": 32}}
    new = {"seed": 0, "device": "cpu", "train": {"lr": 1e-3, "epochs": 9, "progress": False, "betas": [0.9, 0.999],
                                                 "stop_after_steps": 5},
           "logger": {"name": "wandb", "mode": "offline"}, "model": {"d_hidden": 32, "extra": 1}}
    assert rundir.config_differences(stored, new) == ["model.extra", "train.betas"]
    assert rundir.config_differences(stored, stored) == []


# --- unique default run folders -------------------------------------------------------------------------------


def test_default_run_folders_of_one_second_differ():
    """Two runs started in the same second with the same seed used to get one folder. Hydra's ${now:} applies
    the pattern with datetime.strftime; two starts a millisecond apart must give two names."""
    hydra_cfg = yaml.safe_load((ROOT / "conf" / "train.yaml").read_text())["hydra"]
    for key in ("run", "sweep"):
        pattern = hydra_cfg[key]["dir"].split("${now:")[1].split("}")[0]
        t = dt.datetime(2026, 1, 1, 12, 0, 0, 1000)
        assert t.strftime(pattern) != (t + dt.timedelta(milliseconds=1)).strftime(pattern), key


def test_manifest_hashes_are_cached_but_a_rewrite_is_rehashed(tmp_path):
    path = tmp_path / "w.bin"
    checkpoint.write_bytes(path, b"one")
    first = checkpoint.file_sha256(path)
    checkpoint.write_bytes(path, b"two")  # atomic rewrite: a new inode
    assert checkpoint.file_sha256(path) != first


def test_load_weights_of_a_loose_file_needs_no_manifest(tmp_path):
    model = torch.nn.Linear(2, 2)
    checkpoint.save_weights(tmp_path / "loose.safetensors", model)
    checkpoint.load_weights(tmp_path / "loose.safetensors", torch.nn.Linear(2, 2))
