"""Ground-truth toy tasks: E10 Boolean gates (exact structure) and E5 Casper on a planted dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bilinear.tasks.casper import casper_labels
from bilinear.tasks.gates import EXPECTED, all_inputs, gate_targets
from conftest import run_cli


def test_gate_targets_are_the_multilinear_polynomials():
    x = all_inputs(3)
    y = gate_targets(x, ["and", "or", "xor"])  # pairs (0,1), (0,2), (1,2)
    a, b = x[:, 0].bool(), x[:, 1].bool()
    assert torch.equal(y[:, 0].bool(), a & b) and torch.equal(y[:, 1].bool(), a | b) and torch.equal(y[:, 2].bool(), a ^ b)


@pytest.fixture(scope="module")
def gates_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("gates") / "run"
    run_cli("train", "task=gates", "scale=tiny", f"hydra.run.dir={run}", "train.progress=false")
    run_cli("analyze", f"ckpt={run}")
    return run


@pytest.mark.parametrize("gate", ["and", "or", "xor"])
def test_gate_interaction_matrices_have_the_known_structure(gates_run, gate):
    """AND: self 0, cross +1/2; OR: self 1, cross -1/2; XOR: self 1, cross -1; nothing outside the pair."""
    m = json.loads((gates_run / "analysis/metrics.json").read_text())["gates"]
    assert m["exactness_rel_error"] < 1e-5
    exp_self, exp_cross = EXPECTED[gate]
    outputs = {k: v for k, v in m["per_output"].items() if k.startswith(gate + "(")}
    assert len(outputs) == 6  # 4 inputs -> 6 pairs
    for name, v in outputs.items():
        assert v["self_a"] == pytest.approx(exp_self, abs=0.05), name
        assert v["self_b"] == pytest.approx(exp_self, abs=0.05), name
        assert v["cross"] == pytest.approx(exp_cross, abs=0.05), name
        assert v["max_abs_outside"] < 0.05, name
    assert (gates_run / "analysis/gates/gates.png").is_file()


def write_planted(root: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> int:
    """MNIST-format files whose image 0 is a planted target (a vertical bar with a hook); about half of the other
    images are jittered copies of it, the rest other strokes. Returns the target's index (0)."""
    from bilinear.dataio.idx import write_idx

    rng = np.random.default_rng(seed)
    target = np.zeros((28, 28))
    target[4:24, 12:16] = 1.0
    target[4:8, 8:12] = 1.0
    d = root / "mnist"
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28))
        for i in range(n):
            if (split == "train" and i == 0) or rng.random() < 0.5:
                img = np.roll(target, rng.integers(-1, 2), axis=1) * rng.uniform(0.7, 1.0)
            else:
                img = np.zeros((28, 28))
                r, c = rng.integers(3, 20), rng.integers(3, 18)
                img[r : r + 4, c : c + 10] = 1.0  # a horizontal stroke somewhere
                img[rng.integers(3, 20) :, rng.integers(2, 6)][:5] = 1.0
            images[i] = np.clip(img + 0.05 * rng.random((28, 28)), 0, 1)
        if split == "train":
            images[0] = target
        write_idx(d / f"{split}-images-idx3-ubyte.gz", (images * 255).astype(np.uint8))
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))
    return 0


def test_casper_top_eigenvector_is_the_planted_target(tmp_path):
    index = write_planted(tmp_path / "data")
    from bilinear.dataio.images import load_image_dataset

    data = load_image_dataset("mnist", tmp_path / "data", verify=False)
    labels = casper_labels(data.train_x, data.train_x[index], 0.4)
    assert 0.3 < labels.float().mean() < 0.7  # the planted set is balanced
    run = tmp_path / "run"
    run_cli("train", "task=casper", "scale=tiny", f"data_root={tmp_path / 'data'}", f"hydra.run.dir={run}",
            f"data.target_index={index}", "data.limit_train=null", "train.epochs=40", "train.lr=0.01", "train.progress=false")
    assert json.loads((run / "metrics.json").read_text())["test_acc"] > 0.9
    run_cli("analyze", f"ckpt={run}")
    m = json.loads((run / "analysis/metrics.json").read_text())["casper"]
    assert m["exactness_rel_error"] < 1e-4  # biases folded in through the homogeneous coordinate
    # the generalizing solution: one dominant positive eigenvalue, and the top eigenvectors express the target
    assert m["top_positive_lambda"] > 3 * abs(m["second_positive_lambda"]), m
    # correlates with the planted target: a random direction would give |r| ~ 1/sqrt(784) ~ 0.04
    assert m["abs_corr_top_vs_target"] > 0.3 and m["abs_corr_top_positive_vs_target"] > 0.25, m
    assert 0.3 < m["frac_true_train"] < 0.7
    assert (run / "analysis/casper/casper.png").is_file()
