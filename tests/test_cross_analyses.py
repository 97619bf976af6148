"""Issue 3's analyses across runs: consistency (planted structure, sign flips, no self-pairs), noise_sweep,
sparsity_grid and truncation_sizes from the CLI on copies of the tiny run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from bilinear.decompose import Eigen
from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


def copy_run(src: Path, dst: Path, **overrides) -> Path:
    """A copy of a run directory with config values replaced (``train.noise_std=0.0`` as keyword ``train__noise_std``)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("analysis"))
    (dst / "manifest.json").unlink(missing_ok=True)  # edited by hand below: no longer the files training wrote
    cfg = OmegaConf.load(dst / "config.yaml")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    OmegaConf.save(cfg, dst / "config.yaml")
    return dst


def permute_hidden(run: Path, seed: int) -> None:
    """Same function, different hidden basis: permute and sign-flip the embedding's outputs (z) and the bilinear
    units (h). Eigenvectors in z are permuted and sign-flipped; in pixel space they are unchanged up to sign."""
    w = load_file(str(run / "model.safetensors"))
    E, proj, P = w["embed.weight"], w["layers.0.proj.weight"], w["head.weight"]  # proj = [W; V] stacked, (2h, d)
    h, d = proj.shape[0] // 2, E.shape[0]
    g = torch.Generator().manual_seed(seed)
    perm, sign = torch.randperm(d, generator=g), torch.where(torch.rand(d, generator=g) < 0.5, -1.0, 1.0)
    E = sign[:, None] * E[perm]  # z' = S Pi z
    proj = proj[:, perm] * sign[None, :]  # W' = W Pi^T S, so W' z' = W z (and the same for V)
    perm_h, sign_h = torch.randperm(h, generator=g), torch.where(torch.rand(h, generator=g) < 0.5, -1.0, 1.0)
    W, V = sign_h[:, None] * proj[:h][perm_h], sign_h[:, None] * proj[h:][perm_h]  # both flipped: (Wz)*(Vz) kept
    w.update({"embed.weight": E, "layers.0.proj.weight": torch.cat([W, V]), "head.weight": P[:, perm_h]})
    save_file({k: v.contiguous() for k, v in w.items()}, str(run / "model.safetensors"))


def test_consistency_of_a_permuted_sign_flipped_copy_is_one(tiny_mnist_run, tmp_path):
    a = copy_run(tiny_mnist_run, tmp_path / "a", seed=0)
    b = copy_run(tiny_mnist_run, tmp_path / "b", seed=1)
    permute_hidden(b, seed=5)
    out = tmp_path / "cross"
    run_cli("analyze", f"runs=[{a},{b}]", f"out={out}", "analyses=[consistency]")
    m = json.loads((out / "metrics.json").read_text())["consistency"]
    size = m["per_size"]["32"]
    assert size["n_pairs"] == 1  # one pair of different seeds; no (a, a) or (b, b)
    assert size["top1"] == pytest.approx(1.0, abs=1e-6)
    assert size["mean"] == pytest.approx([1.0] * m["n_vectors"], abs=1e-6)
    assert (out / "consistency" / "consistency.png").is_file()
    # the decompositions of the two runs really differ in hidden space (permuted), yet agree in pixel space
    va = load_file(str(a / "analysis" / "decomposition.safetensors"))["vectors"]
    vb = load_file(str(b / "analysis" / "decomposition.safetensors"))["vectors"]
    assert not torch.allclose(va.abs(), vb.abs(), atol=1e-3)


def fake_run(name: str, seed: int, vectors: torch.Tensor, size: int = 8) -> SimpleNamespace:
    """A stand-in RunContext with planted pixel-space eigenvectors (C, r, n)."""
    C, r, n = vectors.shape
    eig = Eigen(values=torch.linspace(1, 0.1, r).repeat(C, 1), vectors=vectors, input_vectors=vectors)
    return SimpleNamespace(run_dir=Path("/fake") / name, class_eigen=eig,
                           run_cfg=OmegaConf.create({"seed": seed, "model": {"d_hidden": size}}),
                           image_data=SimpleNamespace(train_x=torch.zeros(2, n)))


def test_consistency_is_sign_invariant_and_excludes_self_pairs(tmp_path):
    from bilinear.analyses.consistency import consistency

    cfg = OmegaConf.load(ROOT / "conf" / "analyze.yaml")
    cfg.consistency.n_vectors = 4
    g = torch.Generator().manual_seed(0)
    base = torch.linalg.qr(torch.randn(3, 16, 4, dtype=torch.float64, generator=g)).Q.transpose(-1, -2)  # (3, 4, 16)
    flips = torch.where(torch.rand(3, 4, 1, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    other = torch.linalg.qr(torch.randn(3, 16, 4, dtype=torch.float64, generator=g)).Q.transpose(-1, -2)

    # identical structure with flipped signs: exactly 1.0
    m = consistency([fake_run("a", 0, base), fake_run("b", 1, flips * base)], tmp_path / "one", cfg)
    assert m["per_size"]["8"]["n_pairs"] == 1
    assert m["per_size"]["8"]["mean"] == pytest.approx([1.0] * 4)

    # a, its sign-flipped copy, and an unrelated run: 3 pairs, the mean counts no run against itself
    m = consistency([fake_run("a", 0, base), fake_run("b", 1, flips * base), fake_run("c", 2, other)],
                    tmp_path / "three", cfg)
    s = m["per_size"]["8"]
    assert s["n_pairs"] == 3
    x = (base * other).sum(-1).abs().mean(0)[0].item()  # |cos| of a (and b) with c, top vector, class mean
    assert sorted(s["top1_pairs"]) == pytest.approx(sorted([1.0, x, x]))
    assert s["top1"] == pytest.approx((1.0 + 2 * x) / 3)  # with self-pairs it would be (4 + 2x) / 6

    # the same run given twice, or two runs of the same seed, make no seed pair
    with pytest.raises(Exception, match="different seeds"):
        consistency([fake_run("a", 0, base), fake_run("a", 0, base)], tmp_path / "dup", cfg)


def test_sweep_analyses_from_the_cli(tiny_mnist_run, tmp_path):
    """noise_sweep, sparsity_grid and truncation_sizes in one call on a 2 x 2 grid of (relabelled) copies of the tiny run."""
    runs = []
    for wd in (0.0, 1.0):
        for noise in (0.0, 0.4):
            runs.append(copy_run(tiny_mnist_run, tmp_path / f"wd{wd}_n{noise}", train__weight_decay=wd,
                                 train__noise_std=noise))
    out = tmp_path / "cross"
    run_cli("analyze", f"runs=[{','.join(map(str, runs))}]", f"out={out}",
            "analyses=[noise_sweep,sparsity_grid,truncation_sizes]", "noise_sweep.class_id=3")
    m = json.loads((out / "metrics.json").read_text())
    ns = m["noise_sweep"]
    assert ns["weight_decay"] == 1.0 and ns["noise_std"] == [0.0, 0.4] and ns["class_id"] == 3
    sg = m["sparsity_grid"]
    assert sg["weight_decay"] == [0.0, 1.0] and sg["noise_std"] == [0.0, 0.4]
    assert len(sg["effective_rank"]) == 2 and len(sg["effective_rank"][0]) == 2
    s = m["truncation_sizes"]["per_size"]["32"]
    assert s["n_seeds"] == 4 and s["full_equals_model_all"]
    for f in ("noise_sweep/noise_sweep.png", "sparsity_grid/sparsity_grid.png", "truncation_sizes/truncation_sizes.png"):
        assert (out / f).is_file(), f


def planted_run(name: str, seed: int, vectors: torch.Tensor, values: list[float]) -> SimpleNamespace:
    """fake_run with planted eigenvalues (one list, ordered by |lambda|, for every class)."""
    run = fake_run(name, seed, vectors)
    run.class_eigen = Eigen(values=torch.tensor(values, dtype=torch.float64).repeat(vectors.shape[0], 1), vectors=vectors,
                            input_vectors=vectors)
    return run


def test_authors_metric_uses_eighs_order_and_counts_self_pairs(tmp_path):
    """Fig 5A as the authors' script computes it: vector 1 = the most negative eigenvalue's, pairs a <= b."""
    from bilinear.analyses.consistency import consistency

    cfg = OmegaConf.load(ROOT / "conf" / "analyze.yaml")
    cfg.consistency.n_vectors = 2
    g = torch.Generator().manual_seed(1)
    q = torch.linalg.qr(torch.randn(2, 12, 4, dtype=torch.float64, generator=g)).Q.transpose(-1, -2)  # (2, 4, 12) orthonormal
    a = q[:, :3]
    b = torch.stack([q[:, 0], q[:, 3], q[:, 2]], 1)  # same top |lambda| vector; the negative one replaced by an orthogonal one
    m = consistency([planted_run("a", 0, a, [3.0, -2.0, 1.0]), planted_run("b", 1, b, [3.0, -2.0, 1.0])], tmp_path, cfg)
    s = m["per_size"]["8"]
    assert s["top1"] == pytest.approx(1.0)  # by |lambda|, distinct seeds
    assert s["most_negative"]["top1"] == pytest.approx(0.0, abs=1e-12)  # eigh's first vector differs completely
    pm = s["paper_metric"]
    assert pm["n_pairs"] == 3 and pm["n_self_pairs"] == 2
    assert pm["top1"] == pytest.approx(2 / 3)  # (1 + 1 + 0) / 3: the self-pairs alone lift 0 to 0.67
    assert pm["lo"][0] < pm["top1"] < pm["hi"][0]


def test_swap_statistics_count_order_swaps_of_near_equal_eigenvalues(tmp_path):
    from bilinear.analyses.consistency import consistency

    cfg = OmegaConf.load(ROOT / "conf" / "analyze.yaml")
    cfg.consistency.n_vectors = 3
    g = torch.Generator().manual_seed(2)
    q = torch.linalg.qr(torch.randn(2, 12, 3, dtype=torch.float64, generator=g)).Q.transpose(-1, -2)
    swapped = q[:, [1, 0, 2]]  # the first two trade ranks: a +/- pair of nearly equal |lambda| in the second seed
    m = consistency([planted_run("a", 0, q, [3.0, -2.0, 1.0]), planted_run("b", 1, swapped, [-3.0, 2.95, 1.0])], tmp_path, cfg)
    sw = m["per_size"]["8"]["swaps"]
    assert sw["n_cases"] == 2 * 2  # one pair, two classes, both directions
    assert sw["swap_fraction"] == 1.0 and sw["sign_disagree_fraction"] == 1.0 and sw["sign_disagree_given_swap"] == 1.0
    assert sw["index_matched"] == pytest.approx(0.0, abs=1e-12) and sw["best_match"] == pytest.approx(1.0)
    assert sw["near_equal_fraction"] == 0.5  # run b's classes (2.95 / 3 >= 0.9), not run a's (2 / 3)
