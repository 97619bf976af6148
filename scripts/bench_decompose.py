"""Benchmark (issue 2): the per-class decomposition of a d_hidden 512 MNIST model, vs a naive baseline.

    ours    decompose_outputs(form, I_10): Q_c from W, V, P without the third-order tensor, eigh ordered by
            |lambda|, eigenvectors mapped to pixels
            (float64, what the analyses use, and float32)
    naive   materialize B (10, 512, 512) with einsum over the hidden units, symmetrize, eigh, map (same dtype)
Target: ours < 0.5 s on 2 CPU threads.   Usage: python scripts/bench_decompose.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bilinear.decompose import decompose_outputs, symmetrize
from bilinear.models.image import ImageClassifier


def naive(form):
    B = torch.einsum("oh,hi,hj->oij", form.P, form.W, form.V)
    vals, vecs = torch.linalg.eigh(symmetrize(B))
    return vals, vecs.transpose(-1, -2) @ form.embed


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--d-hidden", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for dtype in (torch.float64, torch.float32):
        measure(a, dtype)


def measure(a, dtype) -> None:
    torch.manual_seed(0)
    form = ImageClassifier(784, a.d_hidden, 10).bilinear_form().to(dtype=dtype)
    eye = torch.eye(10, dtype=dtype)
    decompose_outputs(form, eye), naive(form)  # warm-up
    t_ours, t_naive = [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        decompose_outputs(form, eye)
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        naive(form)
        t_naive.append(time.perf_counter() - t0)
    o, n = statistics.median(t_ours), statistics.median(t_naive)
    print(f"per-class decomposition, d_hidden {a.d_hidden}, 10 classes, mapped to 784 pixels, {str(dtype)[6:]}, "
          f"{a.threads} threads: ours {o:.3f} s (target < 0.5 s), naive {n:.3f} s, ratio naive/ours {n / o:.2f}")


if __name__ == "__main__":
    main()
