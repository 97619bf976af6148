"""The run directory as a small database (DESIGN.md principle 9): one writer, a manifest, checkpoint transactions.

**One writer.** ``writer_lock`` holds a non-blocking ``fcntl`` lock on ``<run>/.lock`` for a whole training
session. A second writer is refused at once with the holder's pid and host (written into the lock file),
so two trainings in one folder can never leave a chimera. The kernel drops the lock when its process dies,
so a killed run never leaves a stale lock behind.

**The manifest.** ``manifest.json`` records the sha256 of every file training wrote (``files``), the step,
whether the run is complete, the code version, and each training session's torch version, thread count and
device (weights are bitwise reproducible only for the same seed, thread count and device). Loaders verify it
(``checkpoint.verify_files``).

**Checkpoints are transactions.** A checkpoint at step N writes ``checkpoints/step-<N>.safetensors`` and
``checkpoints/step-<N>.pt`` (optimizer, scheduler, history, running sums, and the step and sha256 of the
weights it belongs to), each fsynced, then commits by one atomic rename of ``manifest.json`` naming them;
files of older checkpoints are removed only after that. A crash at any point leaves the manifest naming
either the old checkpoint or the new one, each complete and hash-checked. The final weights commit the
same way: ``model.safetensors``, ``history.csv`` and ``metrics.json``, then the manifest with
``"complete": true``, then the checkpoint files go.

**A resume must match.** ``check_start`` and ``check_resume_config`` refuse, before anything in the folder
is written: a finished run, a fresh start over an unfinished run's checkpoint, and a resume whose config
differs from the stored config.yaml in any key outside ``RESUME_MAY_CHANGE``.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import io
import logging
import os
import shutil
import signal
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save as safetensors_bytes
from torch import nn

from bilinear import checkpoint
from bilinear.errors import CheckpointError, ConfigError

MANIFEST, CHECKPOINTS, RUN_LOCK = checkpoint.MANIFEST, "checkpoints", ".lock"
FORMAT = 1

# Keys a resume may change, and why each cannot make the stored config misdescribe the run. A dotted key
# covers its subtree. Anything else that differs (lr, seed, model shape, data, schedule) refuses the resume.
RESUME_MAY_CHANGE = {
    "train.resume": "asks for the resume itself",
    "train.epochs": "extends a run (the schedule's length follows it from the resumed step on)",
    "train.tokens": "extends an LM or SAE run, as train.epochs",
    "train.stop_after_steps": "where this session stops, not what it trains",
    "train.checkpoint_every": "how often progress is saved, not what is trained",
    "train.progress": "the progress bar",
    "device": "where it runs (bitwise equality with an uninterrupted run needs the same device and threads)",
    "logger": "where metrics are also sent",
}

# Test-only fault injection: BILINEAR_KILL_AT=<point>[@<step>] makes the process SIGKILL itself at that write
# boundary, as a power cut or `kill -9` would (no cleanup, no finally). The crash-point test uses it.
KILL_ENV = "BILINEAR_KILL_AT"
log = logging.getLogger(__name__)  # notes: to the console and, under `python -m train`, the run's train.log


def kill_point(name: str, step: int | None = None) -> None:
    want = os.environ.get(KILL_ENV)
    if not want:
        return
    point, _, at = want.partition("@")
    if point == name and (not at or step is None or int(at) == step):
        os.kill(os.getpid(), signal.SIGKILL)


# --- one writer per run folder ----------------------------------------------------------------------------


class RunLockedError(CheckpointError):
    """Another process holds the run folder's writer lock."""


@contextmanager
def writer_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold ``<run>/.lock`` exclusively for the block; refuse at once (never wait) when another process holds it.

    Waiting would be wrong here: the holder is a training that may run for hours, and a second writer in
    the same folder is a mistake to report (two runs given the same hydra.run.dir), not a turn to wait for.
    """
    run_dir = Path(run_dir)
    path = run_dir / RUN_LOCK
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise CheckpointError(f"{run_dir}: cannot write to the run folder ({e.strerror}); choose another "
                              f"hydra.run.dir") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "a process that has not said who it is"
            raise RunLockedError(f"{run_dir} is being written by another training ({holder}); wait for it to "
                                 f"finish or choose another hydra.run.dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {_now()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --- what produced a run ----------------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


_CODE_VERSION: dict[str, Any] | None = None


def code_version() -> dict[str, Any]:
    """The git commit of the checkout the code runs from (and whether its tracked files were modified), else
    the installed package version. Read once per process."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        from importlib import metadata

        try:
            package = metadata.version("bilinear-suite")
        except metadata.PackageNotFoundError:
            package = None
        root = Path(__file__).resolve().parents[2]
        commit, modified = None, None
        if (root / ".git").exists():
            try:
                commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                        timeout=10, check=True).stdout.strip()
                status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no",
                                         "--", "src", "conf"], capture_output=True, text=True, timeout=10, check=True)
                modified = bool(status.stdout.strip())
            except (OSError, subprocess.SubprocessError):
                commit, modified = None, None
        _CODE_VERSION = {"git_commit": commit, "git_modified": modified, "package": package}
    return dict(_CODE_VERSION)


def session_record(device: torch.device, from_step: int, overrides: list[str] | None = None) -> dict[str, Any]:
    """One training session: where and with what it ran. Thread count and device decide the last bits of the
    weights (float sums are ordered differently), so a resume that changes them is recorded, not hidden.
    ``overrides``: the command line's config overrides (Hydra rewrites .hydra/ on every call, even a refused
    one; this record is only written by a session that passed the checks)."""
    return {"from_step": from_step, "started": _now(), "host": socket.gethostname(), "pid": os.getpid(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": str(device),
            "code": code_version(), "overrides": list(overrides or [])}


# --- checks before anything is written ----------------------------------------------------------------------


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: obj}


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE)


def config_differences(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two plain configs (present in one only counts), outside the
    allow-list, sorted."""
    a, b = _flatten(stored), _flatten(new)
    return sorted(k for k in set(a) | set(b) if not _may_change(k) and (k not in a or k not in b or a[k] != b[k]))


def checkpoint_step(run_dir: Path) -> int | None:
    """Step of the run's committed checkpoint (a legacy train_state.pt counts), or None when it has none."""
    manifest = checkpoint.read_manifest(run_dir)
    if manifest is not None and manifest.get("checkpoint"):
        return int(manifest["checkpoint"]["step"])
    legacy = run_dir / checkpoint.TRAIN_STATE
    if legacy.exists():
        return int(checkpoint.load_train_state(legacy).get("step", 0))
    return None


def check_start(run_dir: Path, resume: bool) -> None:
    """Refuse a training that would lose what the folder holds; runs before any write and before the task is
    built.

    - a finished run is never retrained or overwritten (resume or not);
    - a fresh start over an unfinished run's checkpoint would discard it: resume it, or use another folder;
    - a resume needs a run in the folder.
    """
    if checkpoint.is_complete(run_dir):
        raise CheckpointError(f"{run_dir} already holds a finished run; nothing to resume or retrain there (choose "
                              f"another hydra.run.dir for a new run)")
    if not resume:
        step = checkpoint_step(run_dir)
        if step is not None:
            raise CheckpointError(f"{run_dir} holds an unfinished run checkpointed at step {step}; continue it with "
                                  f"train.resume=true, or choose another hydra.run.dir")
        return
    if not (run_dir / checkpoint.CONFIG).is_file():
        raise CheckpointError(f"train.resume=true: {run_dir} holds no run to resume (no {checkpoint.CONFIG}); "
                              f"drop train.resume to start a new run there")
    checkpoint.verify_files(run_dir)  # the stored config and the checkpoint are what the run wrote


def check_resume_config(run_dir: Path, cfg: DictConfig) -> None:
    """Refuse a resume whose config differs from the run's stored config.yaml outside ``RESUME_MAY_CHANGE``.

    ``cfg`` is the config as the task completed it (an SAE fills in its layer, width and the LM's resolved
    path), which is what the first session saved; call it after ``build_task`` and before ``RunWriter.begin``
    rewrites config.yaml.
    """
    stored = OmegaConf.to_container(checkpoint.load_config(run_dir), resolve=False)
    new = OmegaConf.to_container(cfg, resolve=True)
    differ = config_differences(stored, new)
    if differ:
        shown = ", ".join(f"{k} ({_get(stored, k)!r} -> {_get(new, k)!r})" for k in differ[:8])
        more = f" and {len(differ) - 8} more" if len(differ) > 8 else ""
        raise ConfigError(f"train.resume=true: the config differs from the run's in {shown}{more}; a resume may "
                          f"change only {', '.join(RESUME_MAY_CHANGE)} (start a new run for anything else)")


def _get(cfg: dict[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return "<absent>"
        node = node[part]
    return node


# --- the writer ---------------------------------------------------------------------------------------------


def _state_bytes(model: nn.Module) -> bytes:
    return safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()})


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class RunWriter:
    """Every write of one training session to its run folder, each committed through manifest.json.

    Call under ``writer_lock``, after ``check_start``. ``begin`` writes config.yaml and the task's artifacts,
    ``load_checkpoint`` returns the committed train state (resume), ``commit_checkpoint`` and ``finish`` are
    the two transactions.
    """

    def __init__(self, run_dir: str | Path, device: torch.device, resume: bool = False):
        self.run_dir, self.device = Path(run_dir), device
        previous = checkpoint.read_manifest(self.run_dir) if resume else None
        self.manifest: dict[str, Any] = {
            "format": FORMAT, "complete": False, "step": 0, "checkpoint": None, "files": {}, "sessions": [],
            **(previous or {}),
        }
        self.manifest["complete"] = False
        # a checkpoint written before transactions (a manifest may exist without a checkpoint entry: the first
        # resume of such a run wrote one, then stopped before its first new checkpoint)
        self.legacy_resume = (resume and not self.manifest["checkpoint"]
                              and (self.run_dir / checkpoint.TRAIN_STATE).exists())

    # -- the session's start --------------------------------------------------------------------------------
    def begin(self, cfg: DictConfig, task: Any, overrides: list[str] | None = None) -> None:
        """config.yaml, the task's artifacts (tokenizer, lm.json, ...), then a manifest that lists them.

        On a resume the artifacts are rewritten from the run's inputs; one that comes out different (an SAE's
        LM retrained, another tokenizer) means the inputs changed under the run: it is restored and refused.
        """
        run_dir = self.run_dir
        if not self.manifest["checkpoint"] and not self.legacy_resume:
            self._clear_stale()
        if self.manifest["files"].pop(checkpoint.CONFIG, None):
            # A resume rewrites config.yaml (train.resume, an extended train.epochs). Unlist it first: a crash
            # between the rewrite and the commit below must not leave a manifest that calls the new file
            # corrupt. Meanwhile the resume check compares it with the next command's config all the same.
            self._commit()
        before = self._top_files()
        kept = {n: (run_dir / n).read_bytes() for n in self.manifest["files"] if "/" not in n
                and n not in (checkpoint.CONFIG, checkpoint.WEIGHTS, checkpoint.HISTORY, checkpoint.METRICS)
                and (run_dir / n).is_file()}
        checkpoint.save_config(run_dir, cfg)
        kill_point("after_config")
        task.save_artifacts(run_dir)
        changed = {n for n, key in self._top_files().items() if before.get(n) != key}
        for name in sorted(changed | {checkpoint.CONFIG}):
            digest = checkpoint.file_sha256(run_dir / name)
            if name in kept and hashlib.sha256(kept[name]).hexdigest() != digest:
                checkpoint.write_bytes(run_dir / name, kept[name])
                raise CheckpointError(f"train.resume=true: {run_dir / name} would change (the run's inputs are not "
                                      f"those it started from); start a new run instead")
            self.manifest["files"][name] = digest
        self.manifest["sessions"] = [*self.manifest.get("sessions", []),
                                     session_record(self.device, int(self.manifest.get("step", 0)), overrides)]
        self._commit()

    def _top_files(self) -> dict[str, tuple]:
        """Plain files at the folder's top level that training may have written, with (inode, size, mtime)."""
        skip = {MANIFEST, RUN_LOCK, "train.log", checkpoint.TRAIN_STATE, checkpoint.LEGACY_HISTORY}
        out = {}
        for p in self.run_dir.iterdir():
            if p.is_file() and p.name not in skip and not p.name.startswith("."):
                st = p.stat()
                out[p.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return out

    def _clear_stale(self) -> None:
        """A fresh start in a folder a failed run left (no checkpoint, else check_start refused): drop its
        manifest and step files, so nothing from it can be mistaken for this run's."""
        for name in (MANIFEST, checkpoint.LEGACY_HISTORY):
            (self.run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.run_dir / CHECKPOINTS, ignore_errors=True)
        self.manifest.update(files={}, checkpoint=None, step=0, sessions=[])

    # -- resume ---------------------------------------------------------------------------------------------
    def load_checkpoint(self, model: nn.Module) -> dict[str, Any] | None:
        """Load the committed checkpoint's weights into ``model`` and return its train state; None if none.

        Both files are verified against the manifest, and the state must name the step and weights hash of
        the weights beside it: a state never meets weights from another step.
        """
        ck = self.manifest.get("checkpoint")
        if not ck:
            return self._load_legacy(model) if self.legacy_resume else None
        checkpoint.verify_files(self.run_dir, [ck["weights"], ck["state"]], self.manifest)
        state = checkpoint.load_train_state(self.run_dir / ck["state"])
        weights_sha = self.manifest["files"][ck["weights"]]
        if state.get("step") != ck["step"] or state.get("weights_sha256") != weights_sha:
            raise CheckpointError(f"{self.run_dir / ck['state']}: belongs to step {state.get('step')}, not to the "
                                  f"checkpoint's weights at step {ck['step']}")
        checkpoint.load_weights(self.run_dir / ck["weights"], model)
        self._remove_unreferenced()  # step files a crash left before or after its commit
        return state

    def _load_legacy(self, model: nn.Module) -> dict[str, Any]:
        """A checkpoint written before transactions: train_state.pt + model.safetensors + history.json. Nothing
        ties the two files together, so say that it resumes unverified; its first new checkpoint replaces it."""
        state = checkpoint.load_train_state(self.run_dir / checkpoint.TRAIN_STATE)
        checkpoint.load_weights(self.run_dir / checkpoint.WEIGHTS, model, verify=False)  # no hash was ever recorded
        self.manifest["sessions"][-1]["from_step"] = int(state.get("step", 0))
        history_path = self.run_dir / checkpoint.LEGACY_HISTORY
        state["history"] = checkpoint.read_json(history_path) if history_path.exists() else []
        log.warning(f"{self.run_dir} holds a checkpoint written before manifests (step {state.get('step')}); resuming "
                    f"it unverified")
        return state

    # -- the two transactions -------------------------------------------------------------------------------
    def commit_checkpoint(self, model: nn.Module, state: dict[str, Any], step: int) -> None:
        """Weights and train state under step-named files, then the manifest that names them (the commit)."""
        d = self.run_dir / CHECKPOINTS
        d.mkdir(exist_ok=True)
        weights, train_state = f"{CHECKPOINTS}/step-{step:08d}.safetensors", f"{CHECKPOINTS}/step-{step:08d}.pt"
        kill_point("before_weights", step)
        weights_sha = checkpoint.write_bytes(self.run_dir / weights, _state_bytes(model))
        kill_point("after_weights", step)
        state_sha = checkpoint.write_bytes(self.run_dir / train_state,
                                           _torch_bytes({**state, "step": step, "weights_sha256": weights_sha}))
        kill_point("after_state", step)
        files = {k: v for k, v in self.manifest["files"].items() if not k.startswith(CHECKPOINTS + "/")}
        files.update({weights: weights_sha, train_state: state_sha})
        self.manifest.update(files=files, step=step, checkpoint={"step": step, "weights": weights, "state": train_state})
        self._commit()
        kill_point("after_manifest", step)
        self._remove_unreferenced()
        self._remove_legacy()

    def finish(self, model: nn.Module, history: list[dict[str, Any]], fields: list[str], metrics: dict[str, Any],
               step: int) -> None:
        """Final weights, history.csv and metrics.json, then the manifest with ``"complete": true`` (the commit),
        then the checkpoint files, which a finished run no longer needs."""
        run_dir = self.run_dir
        files = self.manifest["files"]
        files[checkpoint.WEIGHTS] = checkpoint.write_bytes(run_dir / checkpoint.WEIGHTS, _state_bytes(model))
        kill_point("final_after_weights", step)
        checkpoint.write_csv(run_dir / checkpoint.HISTORY, history, fields)
        files[checkpoint.HISTORY] = checkpoint.file_sha256(run_dir / checkpoint.HISTORY)
        text = checkpoint.json_text(metrics)
        files[checkpoint.METRICS] = checkpoint.write_bytes(run_dir / checkpoint.METRICS, text.encode())
        kill_point("final_after_metrics", step)
        self.manifest.update(files={k: v for k, v in files.items() if not k.startswith(CHECKPOINTS + "/")},
                             step=step, checkpoint=None, complete=True)
        self._commit()
        kill_point("final_after_manifest", step)
        shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
        self._remove_legacy()

    def _commit(self) -> None:
        self.manifest["written"] = _now()
        self.manifest["code"] = code_version()
        checkpoint.write_json(self.run_dir / MANIFEST, self.manifest)

    def _remove_unreferenced(self) -> None:
        d = self.run_dir / CHECKPOINTS
        if d.is_dir():
            for p in d.iterdir():
                if f"{CHECKPOINTS}/{p.name}" not in self.manifest["files"]:
                    p.unlink(missing_ok=True)
            checkpoint.fsync_dir(d)

    def _remove_legacy(self) -> None:
        """The pre-transaction resume files: once a new checkpoint or the final weights are committed, they
        describe an older step than the manifest and must not be read again."""
        for name in (checkpoint.TRAIN_STATE, checkpoint.LEGACY_HISTORY):
            (self.run_dir / name).unlink(missing_ok=True)
        if not self.manifest["complete"] and checkpoint.WEIGHTS not in self.manifest["files"]:
            (self.run_dir / checkpoint.WEIGHTS).unlink(missing_ok=True)  # a legacy checkpoint's weights
