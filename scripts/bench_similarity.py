"""Benchmark (issue 17): exact similarity of two bilinear models from Gram matrices vs materialising their tensors.

    gram          bilinear.similarity: fold the embedding into W, V (h, n), one (2h, n) @ (n, 2h) product per pair
                  (and one per model for its norm), then I = 1/2 P (G_WW o G_VV + G_WV o G_VW) P^T. Memory O(h^2).
    materialised  the bare-PyTorch route: B_c = sym(W~^T diag(P_c) V~) for every output c as one batched matmul,
                  (o, n, n) per model, then <B_a, B_b> and the norms. Memory O(o n^2) per model.

Two shapes, each a pair of randomly initialised models, float64, in this one process:
    image   PAPER.md's classifier: 784 pixels, d_hidden = 1000 (E4's largest size), 10 classes. B is 10 x 784 x 784
            (49 MB), so both routes run at d = 1000 and the ratio is measured there.
    square  a layer with d_in = d_hidden = d_out = d (a transformer MLP's shape, outputs = d_model). At d = 1000, B is
            10^9 entries (8 GB) per model: only the Gram route runs; the ratio is measured at --square-small, where B fits.
Both routes must agree (printed); timings are medians of --repeats.   Usage: python scripts/bench_similarity.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bilinear.decompose import BilinearForm, symmetrize
from bilinear.models.image import ImageClassifier
from bilinear.similarity import input_factors, similarity


def materialised_cosine(a: BilinearForm, b: BilinearForm) -> float:
    """Cosine of the two (o, n, n) tensors, each materialised in input space (the embedding folded in first)."""
    Bs = []
    for f in (a, b):
        W, V = (f.W, f.V) if f.embed is None else (f.W @ f.embed, f.V @ f.embed)
        Bs.append(symmetrize((W.T.unsqueeze(0) * f.P.unsqueeze(1)) @ V))  # (o, n, h) @ (h, n) -> (o, n, n)
    Ba, Bb = Bs
    return float((Ba * Bb).sum() / (Ba.norm() * Bb.norm()))


def gram_cosine(a: BilinearForm, b: BilinearForm) -> float:
    return similarity(input_factors(a), input_factors(b)).total


def timed(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times, value = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def square_pair(d: int) -> tuple[BilinearForm, BilinearForm]:
    g = torch.Generator().manual_seed(d)
    r = lambda: torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5  # noqa: E731
    return BilinearForm(r(), r(), r()), BilinearForm(r(), r(), r())


def compare(what: str, a: BilinearForm, b: BilinearForm, repeats: int, materialise: bool) -> None:
    o, n, h = a.P.shape[0], (a.embed.shape[1] if a.embed is not None else a.d), a.W.shape[0]
    t_g, c_g = timed(lambda: gram_cosine(a, b), repeats)
    mem_g = 4 * h * h * 8 / 2**20
    line = f"{what}: o={o}, n={n}, h={h}: gram {t_g:.3f} s (Gram block {mem_g:.0f} MiB)"
    if materialise:
        t_m, c_m = timed(lambda: materialised_cosine(a, b), repeats)
        line += (f", materialised {t_m:.3f} s (B {o * n * n * 8 / 2**20:.0f} MiB per model), ratio materialised/gram "
                 f"{t_m / t_g:.2f}; cosines {c_g:.9f} vs {c_m:.9f} (|diff| {abs(c_g - c_m):.1e})")
    else:
        line += f"; materialising would hold {o * n * n * 8 / 2**30:.1f} GiB per model (not run); cosine {c_g:.6f}"
    print(line, flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="1 on a shared machine: more threads than free cores spin")
    p.add_argument("--d", type=int, default=1000)
    p.add_argument("--square-small", type=int, default=256, help="square size where materialising fits, for the ratio")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, float64, median of {a.repeats}")
    torch.manual_seed(0)
    m1, m2 = ImageClassifier(784, a.d, 10), ImageClassifier(784, a.d, 10)
    compare("image pair", m1.bilinear_form().to(dtype=torch.float64), m2.bilinear_form().to(dtype=torch.float64),
            a.repeats, materialise=True)
    compare("square pair", *square_pair(a.square_small), a.repeats, materialise=True)
    compare("square pair", *square_pair(a.d), a.repeats, materialise=False)


if __name__ == "__main__":
    main()
