"""Shared fixtures. Tests are offline, CPU-only, and use tiny data that they write themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.update({"WANDB_MODE": "disabled", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""})

ROOT = Path(__file__).resolve().parents[1]


def run_cli(module: str, *args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m <module> args`` as a user would; returns the completed process (text output)."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    if check and proc.returncode != 0:
        raise AssertionError(f"python -m {module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_fixture_images(root: Path, name: str = "mnist", n_train: int = 256, n_test: int = 128, seed: int = 0) -> Path:
    """Tiny idx files under <root>/<name>/ in the canonical layout: class c is a bright blob at a
    class-specific position plus noise, so a model can learn it in a few steps."""
    import numpy as np

    from bilinear.dataio.idx import write_idx

    rng = np.random.default_rng(seed)
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.random((n, 28, 28)) * 60).astype(np.float64)
        for i, c in enumerate(labels):
            r, col = 4 + 2 * (c % 5) * 2, 6 + (c // 5) * 12
            images[i, r : r + 5, col : col + 8] = 255
        write_idx(d / f"{split}-images-idx3-ubyte.gz", images.astype(np.uint8))
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", labels)
    return d


@pytest.fixture(scope="session")
def fixture_data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_fixture_images(root, "mnist")
    write_fixture_images(root, "fmnist", seed=1)
    return root


@pytest.fixture(scope="session")
def tiny_mnist_run(fixture_data_root, tmp_path_factory) -> Path:
    """A finished scale=tiny MNIST run made through the CLI (shared by the analysis tests)."""
    run_dir = tmp_path_factory.mktemp("runs") / "mnist_tiny"
    run_cli("train", "task=mnist", "scale=tiny", f"data_root={fixture_data_root}", f"hydra.run.dir={run_dir}",
            "train.progress=false")
    return run_dir


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished scale=tiny stories LM run and its data root, made through the CLI (shared by the SAE and
    hardening tests; tests that change it work on copies)."""
    root = tmp_path_factory.mktemp("lmdata")
    run = tmp_path_factory.mktemp("runs") / "lm"
    run_cli("train", "task=stories", "scale=tiny", f"data_root={root}", f"hydra.run.dir={run}", "train.progress=false")
    return run, root
