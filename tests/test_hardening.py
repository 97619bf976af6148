"""Issue 11: a run directory is data, never code; bad inputs are one-line errors; reproduce tells the truth.

Each case here failed before the fix (a payload ran, a traceback, a silent exit 0). The resume, manifest,
lock and crash-point cases live in tests/test_rundir.py; docs/hardening.md lists every case of the issue
with its expected error and the test that holds it.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import ROOT, run_cli, write_fixture_images


# --- payloads: what a hostile config.yaml can name ------------------------------------------------------
class _Touch:
    """Unpickling this creates ``marker``: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _payloads(tmp: Path, marker: Path) -> list[dict]:
    npy = tmp / "payload.npy"
    with open(npy, "wb") as f:  # a .npy holding an object array: numpy.load(allow_pickle=True) unpickles it
        np.save(f, np.array([_Touch(marker)], dtype=object), allow_pickle=True)
    return [
        {"_target_": "numpy.load", "file": str(npy), "allow_pickle": True},
        {"_target_": "pathlib.Path.write_text", "_args_": [{"_target_": "pathlib.Path", "_args_": [str(marker)]}, "ran"]},
        {"_target_": "pickle.loads", "data": base64.b64encode(pickle.dumps(_Touch(marker))).decode()},  # hydra blocks this one
    ]


def _plant(run: Path, dst: Path, key: str, payload) -> Path:
    """A copy of ``run`` whose config.yaml has ``payload`` at ``key`` (a dotted path)."""
    shutil.copytree(run, dst)
    # a crafted run carries no manifest (a forger drops it): the defence under test must stop the payload itself
    (dst / "manifest.json").unlink(missing_ok=True)
    cfg = OmegaConf.load(dst / "config.yaml")
    OmegaConf.update(cfg, key, payload, force_add=True)
    OmegaConf.save(cfg, dst / "config.yaml")
    return dst


def _one_line_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode != 0, p.stdout
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr
    for n in needles:
        assert n in errors[0], errors[0]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_crafted_image_run_runs_no_code_in_analyze(tiny_mnist_run, tmp_path, which):
    marker = tmp_path / "PWNED"
    payload = _payloads(tmp_path, marker)[which]
    for key in ("model.hidden_noise", "model"):  # nested in an argument, and as the model itself
        bad = _plant(tiny_mnist_run, tmp_path / f"bad_{key}", key, payload)
        shutil.rmtree(bad / "analysis", ignore_errors=True)
        p = run_cli("analyze", f"ckpt={bad}", "analyses=[spectrum]", check=False)
        _one_line_error(p, "config")
        assert not marker.exists(), f"the payload at {key} ran"


def test_crafted_lm_runs_no_code_on_any_load_path(lm_run, tmp_path):
    """saes=, lm= (task=sae), train.init_from= and the importer's --lm: none builds from a config it was handed."""
    lm, root = lm_run
    marker = tmp_path / "PWNED"
    payload = _payloads(tmp_path, marker)[0]
    bad_lm = _plant(lm, tmp_path / "bad_lm", "model.beta", payload)
    # lm= of an SAE run
    p = run_cli("train", "task=sae", "scale=tiny", f"lm={bad_lm}", f"data_root={root}",
                f"hydra.run.dir={tmp_path / 'sae'}", "train.progress=false", check=False)
    _one_line_error(p)
    # analyze ckpt= on the LM
    p = run_cli("analyze", f"ckpt={bad_lm}", f"data_root={root}", "analyses=[lm_exactness]", check=False)
    _one_line_error(p)
    # saes=[...]: an SAE run directory whose model section carries the payload
    sae = tmp_path / "bad_sae"
    sae.mkdir()
    OmegaConf.save(OmegaConf.create({"task": {"name": "sae", "kind": "sae"}, "sae": {"layer": 0, "site": "mlp_in"},
                                     "lm": str(lm), "model": payload}), sae / "config.yaml")
    (sae / "model.safetensors").write_bytes((lm / "model.safetensors").read_bytes())
    (sae / "metrics.json").write_text('{"complete": true}')
    p = run_cli("analyze", f"ckpt={lm}", f"saes=[{sae}]", f"data_root={root}", "analyses=[lowrank]", check=False)
    _one_line_error(p)
    # train.init_from reads only the weights of the run it names; its config is never built
    run_cli("train", "task=stories", "scale=tiny", f"data_root={root}", f"train.init_from={bad_lm}",
            f"hydra.run.dir={tmp_path / 'ft'}", "train.progress=false", "train.tokens=2048", check=False)
    # the importer's --lm
    from test_importer import write_their_sae

    write_their_sae(tmp_path / "their_sae", layer=0, d=int(OmegaConf.load(lm / "config.yaml").model.d_model))
    p = subprocess.run([str(Path(os.sys.executable)), str(ROOT / "scripts" / "import_authors.py"), "sae",
                        str(tmp_path / "their_sae"), "--lm", str(bad_lm), "--out", str(tmp_path / "imp")],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    _one_line_error(p)
    assert not marker.exists(), "a payload ran"


def test_models_come_only_from_the_allow_list():
    from bilinear.errors import ConfigError
    from bilinear.models.registry import build_model

    ok = build_model({"_target_": "bilinear.models.image.ImageClassifier", "d_hidden": 8})
    assert sum(p.numel() for p in ok.parameters()) > 0
    for bad, msg in [({"_target_": "os.system", "command": "true"}, "not one of the suite's models"),
                     ({"_target_": "bilinear.models.image.ImageClassifier", "d_hidden": 0}, ">= 1"),
                     ({"_target_": "bilinear.models.image.ImageClassifier", "dropout": 1.5}, "dropout"),
                     ({"_target_": "bilinear.models.image.ImageClassifier", "nope": 1}, "not a parameter"),
                     ({"_target_": "bilinear.models.image.ImageClassifier", "d_hidden": "8"}, "must be int"),
                     ({"_target_": "bilinear.models.image.ImageClassifier", "_recursive_": False}, "not a parameter")]:
        with pytest.raises(ConfigError, match=msg):
            build_model(bad)


def test_a_huge_width_in_a_run_config_is_refused_before_allocating(tiny_mnist_run, tmp_path):
    bad = tmp_path / "huge"
    shutil.copytree(tiny_mnist_run, bad)
    (bad / "manifest.json").unlink(missing_ok=True)  # hand-edited: the allocation check must stop it, not the hash
    cfg = OmegaConf.load(bad / "config.yaml")
    cfg.model.d_hidden = 10**9  # 784 x 1e9 x 2 floats: ~6 TB if it were allocated
    OmegaConf.save(cfg, bad / "config.yaml")
    p = run_cli("analyze", f"ckpt={bad}", "analyses=[spectrum]", check=False)
    _one_line_error(p)
    assert "GiB" in p.stderr or "shape" in p.stderr


def test_a_huge_authors_config_is_refused_before_allocating(tmp_path):
    from test_importer import their_tokenizer_json, corpus, write_their_lm

    src = tmp_path / "their_lm"
    write_their_lm(src, their_tokenizer_json(corpus(50)))
    cfg = json.loads((src / "config.json").read_text())
    cfg["n_ctx"] = 2**31  # rotary tables of 2^31 positions: 256 GB at d_model 16 / 2 heads
    (src / "config.json").write_text(json.dumps(cfg))
    p = subprocess.run([os.sys.executable, str(ROOT / "scripts" / "import_authors.py"), "lm", str(src), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    _one_line_error(p, "GiB")


# --- one-line errors for bad values, folders and logins -------------------------------------------------
@pytest.mark.parametrize("override,needle", [
    ("train.lr=-1", "train.lr must be >= 0"),
    ("train.grad_clip=abc", "train.grad_clip must be float"),
    ("model.d_hidden=0", "model.d_hidden must be >= 1"),
    ("train.weight_decay=-0.5", "train.weight_decay must be >="),
    ("train.augment.salt_pepper=2.0", "salt_pepper must be in"),
    ("model.dropout=nan", "model.dropout"),
    ("seed=-3", "seed must be >="),
])
def test_bad_values_are_one_line_errors(fixture_data_root, tmp_path, override, needle):
    run = tmp_path / "run"
    p = run_cli("train", "task=mnist", "scale=tiny", f"data_root={fixture_data_root}", f"hydra.run.dir={run}",
                "train.progress=false", override, check=False)
    _one_line_error(p, needle)
    assert p.returncode == 2 and not (run / "model.safetensors").exists()


def _mount_tmpfs(path: Path, opts: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


def test_unwritable_and_full_folders_are_one_line_errors(fixture_data_root, tiny_mnist_run, tmp_path):
    """Real read-only and full file systems (tmpfs mounts) where the machine allows mounting; a folder that
    cannot be created (under a file) everywhere."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    p = run_cli("train", "task=mnist", "scale=tiny", f"data_root={fixture_data_root}",
                f"hydra.run.dir={blocker / 'run'}", check=False)
    _one_line_error(p, "hydra.run.dir")
    p = run_cli("analyze", f"ckpt={tiny_mnist_run}", "analyses=[spectrum]", f"out={blocker / 'an'}", check=False)
    _one_line_error(p, "out=")
    ro, full = tmp_path / "ro", tmp_path / "full"
    if not _mount_tmpfs(ro, "ro,size=1m"):
        pytest.skip("this machine does not allow mounting a tmpfs (needs root); the folder case above still ran")
    try:
        p = run_cli("train", "task=mnist", "scale=tiny", f"data_root={fixture_data_root}", f"hydra.run.dir={ro / 'run'}",
                    check=False)
        _one_line_error(p, "Read-only", "hydra.run.dir")
        p = run_cli("analyze", f"ckpt={tiny_mnist_run}", "analyses=[spectrum]", f"out={ro / 'an'}", check=False)
        _one_line_error(p, "out=")
        assert _mount_tmpfs(full, "size=48k")
        p = run_cli("train", "task=mnist", "scale=tiny", f"data_root={fixture_data_root}",
                    f"hydra.run.dir={full / 'run'}", "train.progress=false", check=False)
        _one_line_error(p, "No space left")
        assert not [f for f in (full / "run").iterdir() if f.name.endswith(".tmp")]  # no partial file left
    finally:
        _umount(ro)
        _umount(full)


def test_wandb_online_without_login_is_one_line(fixture_data_root, tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    env.update({"NETRC": str(tmp_path / "no_netrc"), "HOME": str(tmp_path), "PYTHONPATH": str(ROOT / "src")})
    p = subprocess.run([os.sys.executable, "-m", "train", "task=mnist", "scale=tiny", f"data_root={fixture_data_root}",
                        f"hydra.run.dir={tmp_path / 'run'}", "logger=wandb", "logger.mode=online"],
                       cwd=ROOT, capture_output=True, text=True, env=env)
    _one_line_error(p, "wandb login")


def test_hand_made_run_directories_get_one_line_errors(tiny_mnist_run, tmp_path):
    bad = tmp_path / "no_data_name"
    shutil.copytree(tiny_mnist_run, bad)
    shutil.rmtree(bad / "analysis", ignore_errors=True)
    (bad / "manifest.json").unlink(missing_ok=True)  # hand-made: no manifest
    cfg = OmegaConf.load(bad / "config.yaml")
    del cfg.data["name"]
    OmegaConf.save(cfg, bad / "config.yaml")
    p = run_cli("analyze", f"ckpt={bad}", "analyses=[spectrum]", check=False)
    _one_line_error(p, "data.name")
    from bilinear import checkpoint
    from bilinear.errors import CheckpointError

    with pytest.raises(CheckpointError, match="missing"):
        checkpoint.read_json(tmp_path / "metrics.json")


def test_full_size_data_is_verified_even_at_tiny_scale(tmp_path):
    """scale=tiny sets data.verify=false for fixtures; files of the published size are checked anyway."""
    from bilinear.dataio.idx import write_idx
    from bilinear.dataio.images import load_image_dataset
    from bilinear.errors import DataError

    d = tmp_path / "mnist"
    d.mkdir()
    for split, n in (("train", 60000), ("t10k", 10000)):  # full-size, but not MNIST: all-white "inverted" images
        write_idx(d / f"{split}-images-idx3-ubyte.gz", np.full((n, 28, 28), 255, np.uint8))
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", np.zeros(n, np.uint8))
    with pytest.raises(DataError):
        load_image_dataset("mnist", tmp_path, verify=False)
    small = tmp_path / "small"
    write_fixture_images(small, "mnist")
    assert len(load_image_dataset("mnist", small, verify=False).train_y) == 256  # fixtures still load


def test_cross_run_analysis_never_writes_above_its_runs(tiny_mnist_run, tmp_path):
    other = tmp_path / "elsewhere" / "run"
    shutil.copytree(tiny_mnist_run, other)
    p = run_cli("analyze", f"runs=[{tiny_mnist_run},{other}]", "analyses=[consistency]", check=False)
    _one_line_error(p, "out=")


def test_analysis_builds_no_token_cache_where_a_run_config_says(lm_run, tmp_path):
    lm, root = lm_run
    elsewhere = tmp_path / "elsewhere"
    bad = _plant(lm, tmp_path / "lm_elsewhere", "data.root", str(elsewhere))
    p = run_cli("analyze", f"ckpt={bad}", "analyses=[samples]", check=False)
    _one_line_error(p, "data_root=")
    assert not elsewhere.exists()


# --- reproduce ------------------------------------------------------------------------------------------
def _profile(monkeypatch, experiments: dict) -> None:
    import bilinear.reproduce as rp

    monkeypatch.setattr(rp, "load_profile", lambda name: OmegaConf.create({"scale": "tiny", "experiments": experiments}))


def test_reproduce_reruns_changed_runs_records_errors_and_exits_nonzero(fixture_data_root, tmp_path, monkeypatch, capsys):
    import bilinear.reproduce as rp

    runs, results = tmp_path / "runs", tmp_path / "results"
    args = ["--profile", "tiny", "--runs", str(runs), "--results", str(results), "--data-root", str(fixture_data_root)]
    _profile(monkeypatch, {"mnist": {"runs": {"main": ["task=mnist"]}}})
    rp.main(args)
    run = runs / "tiny" / "mnist" / "main"
    first = (run / "model.safetensors").read_bytes()
    rp.main(args)  # unchanged: reused
    assert json.loads((results / "status.json").read_text())["experiments"]["mnist"]["runs"]["main"] == "reused"
    _profile(monkeypatch, {"mnist": {"runs": {"main": ["task=mnist", "seed=1"]}}})
    rp.main(args)  # changed overrides: set aside, trained again
    assert json.loads((results / "status.json").read_text())["experiments"]["mnist"]["runs"]["main"] == "trained"
    assert (run / "model.safetensors").read_bytes() != first
    assert [p for p in run.parent.iterdir() if ".stale-" in p.name]  # the old run is kept, not deleted
    _profile(monkeypatch, {"mnist": {"runs": {"main": ["task=mnist", "seed=1"]}},
                           "broken": {"runs": {"main": ["task=mnist", "train.lr=-1"]}}})
    with pytest.raises(SystemExit) as e:
        rp.main(args)
    assert e.value.code == 1
    st = json.loads((results / "status.json").read_text())["experiments"]["broken"]
    assert st["runs"]["main"] == "failed" and "train.lr must be >=" in st["errors"][0]
    assert "HYDRA_FULL_ERROR" not in st["errors"][0]
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rp.main([*args, "--only", "nosuch"])


def test_error_line_picks_the_cause():
    from bilinear.reproduce import error_line

    assert error_line(["x", "error: config: bad", "", "Set the environment variable HYDRA_FULL_ERROR=1 for a complete"]) \
        == "error: config: bad"
    tb = ["Traceback (most recent call last):", '  File "x.py", line 1', "RuntimeError: boom",
          "", "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."]
    assert error_line(tb) == "RuntimeError: boom"


def test_reproduce_stops_its_children_on_sigterm(fixture_data_root, tmp_path):
    """SIGTERM to reproduce ends the training it started (it used to keep running, orphaned)."""
    import signal
    import time

    code = (f"import bilinear.reproduce as rp\nfrom omegaconf import OmegaConf\n"
            f"rp.load_profile = lambda n: OmegaConf.create({{'scale': 'tiny', 'experiments': {{'m': {{'runs': "
            f"{{'main': ['task=mnist', 'train.epochs=100000']}}}}}}}})\n"
            f"rp.main(['--profile', 'tiny', '--runs', r'{tmp_path / 'runs'}', '--results', r'{tmp_path / 'res'}', "
            f"'--data-root', r'{fixture_data_root}'])\n")
    parent = subprocess.Popen([os.sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "runs" / "tiny" / "logs" / "m__main__train.log"
    for _ in range(600):  # wait until the child training has started and written to its log
        if log.exists() and (tmp_path / "runs" / "tiny" / "m" / "main" / "config.yaml").exists():
            break
        time.sleep(0.1)
    children = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()
    assert children, "reproduce started no child"
    parent.send_signal(signal.SIGTERM)
    parent.wait(timeout=60)
    time.sleep(0.5)
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), \
            f"child {pid} still running"


def test_reproduce_resumes_a_checkpointed_run(fixture_data_root, tmp_path, monkeypatch):
    """An unfinished run with a checkpoint is continued (train.resume=true), not set aside and started over."""
    import bilinear.reproduce as rp
    from bilinear.rundir import checkpoint_step

    runs, results = tmp_path / "runs", tmp_path / "results"
    args = ["--profile", "tiny", "--runs", str(runs), "--results", str(results), "--data-root", str(fixture_data_root)]
    _profile(monkeypatch, {"m": {"runs": {"main": ["task=mnist", "train.epochs=4", "train.checkpoint_every=2",
                                                   "+train.stop_after_steps=3"]}}})
    rp.main(args)
    run = runs / "tiny" / "m" / "main"
    first = checkpoint_step(run)
    assert first is not None
    rp.main(args)
    assert json.loads((results / "status.json").read_text())["experiments"]["m"]["runs"]["main"] == "resumed"
    assert checkpoint_step(run) > first and not [p for p in run.parent.iterdir() if ".stale-" in p.name]


def test_error_line_reads_hydra_override_errors():
    from bilinear.reproduce import error_line

    out = ["Could not override 'train.nope'.", "To append to your config use +train.nope=3",
           "Key 'nope' is not in struct", "    full_key: train.nope", "    object_type=dict", "",
           "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."]
    assert error_line(out) == "Could not override 'train.nope'. Key 'nope' is not in struct"


def test_reproduce_reuse_only_trains_nothing_and_lists_what_is_missing(fixture_data_root, tmp_path, monkeypatch):
    """--reuse-only (a profile whose training is split across sessions): finished runs are analysed, the
    others are recorded as missing, nothing is trained or moved, and the report's Settings say so."""
    import bilinear.reproduce as rp

    runs, results = tmp_path / "runs", tmp_path / "results"
    args = ["--profile", "tiny", "--runs", str(runs), "--results", str(results), "--data-root", str(fixture_data_root)]
    _profile(monkeypatch, {"mnist": {"runs": {"main": ["task=mnist"]}, "analyses": ["spectrum"]}})
    rp.main([*args, "--reuse-only"])
    st = json.loads((results / "status.json").read_text())["experiments"]["mnist"]
    assert st["runs"]["main"] == "missing" and st["missing"] == ["main"] and not (runs / "tiny" / "mnist" / "main").exists()
    rp.main(args)  # trains it
    rp.main([*args, "--reuse-only"])
    st = json.loads((results / "status.json").read_text())["experiments"]["mnist"]
    assert st["runs"]["main"] == "reused" and not st.get("missing")
    _profile(monkeypatch, {"mnist": {"runs": {"main": ["task=mnist"], "other": ["task=mnist", "seed=1"]},
                                     "analyses": ["spectrum"]}})
    rp.main([*args, "--reuse-only"])
    report = (results / "REPORT.md").read_text()
    assert "1 of the profile's runs not trained: other" in report and "partial grid" in report


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_take_the_users_umask(tmp_path, umask, mode):
    """mkstemp creates 0600 files whatever the umask, so collaborators could not read a shared run."""
    target = tmp_path / "m.json"
    code = (f"import os; os.umask({umask}); from bilinear import checkpoint; "
            f"checkpoint.write_json(r'{target}', {{'a': 1}})")
    subprocess.run([os.sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert target.stat().st_mode & 0o777 == mode
