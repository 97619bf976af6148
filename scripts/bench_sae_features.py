"""Benchmark (issue 6): eigenpairs of every output-feature matrix Q_a = e_a . B of a bilinear MLP (E11, E12).

    ours    bilinear.features.feature_eigen: Q_a built in chunks from W, V, P and the SAE encoder rows
            (never the (d_out, d, d) tensor), every eigenpair computed, the top ``--keep`` kept per feature
    naive   materialize B (d_out, d, d), then Q_a = e_a . B for chunks of features, the same eigh

Each method runs in a fresh process so its peak resident memory (ru_maxrss) is its own; the ratio is taken
between the two in this one invocation. Random float32 weights with the paper's shapes: d_model 512,
d_hidden 2048, 2048 output features (expansion 4). Target: ours <= 60 s on 2 CPU threads.

    python scripts/bench_sae_features.py [--threads 2] [--features 2048] [--d-model 512] [--d-hidden 2048]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time


def _weights(d: int, h: int, m: int, seed: int = 0):
    import torch

    from bilinear.decompose import BilinearForm

    g = torch.Generator().manual_seed(seed)
    form = BilinearForm(torch.randn(h, d, generator=g) / d**0.5, torch.randn(h, d, generator=g) / d**0.5,
                        torch.randn(d, h, generator=g) / h**0.5)
    rows = torch.randn(m, d, generator=g) / d**0.5
    return form, rows


def _run(method: str, a: argparse.Namespace, queue) -> None:
    import torch

    from bilinear.decompose import eigendecompose, output_tensor
    from bilinear.features import feature_eigen

    torch.set_num_threads(a.threads)
    form, rows = _weights(a.d_model, a.d_hidden, a.features)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if method == "ours":
        eig = feature_eigen(form, rows, keep=a.keep, chunk=a.chunk)
        values = eig.values
    else:
        B = output_tensor(form)  # (d_out, d, d), symmetrized
        parts = []
        for s in range(0, rows.shape[0], a.chunk):
            Q = torch.einsum("mo,oij->mij", rows[s : s + a.chunk], B)
            parts.append(eigendecompose(Q).top(a.keep).values)
        values = torch.cat(parts)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"seconds": seconds, "peak_mib": peak / 1024, "extra_mib": (peak - base) / 1024,
               "values": values[:8].tolist()})


def measure(method: str, a: argparse.Namespace) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run, args=(method, a, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--features", type=int, default=2048)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--d-hidden", type=int, default=2048)
    p.add_argument("--keep", type=int, default=64, help="eigenpairs kept per feature (all are computed)")
    p.add_argument("--chunk", type=int, default=32)
    a = p.parse_args()
    import torch

    ours, naive = measure("ours", a), measure("naive", a)
    same = torch.allclose(torch.tensor(ours["values"]), torch.tensor(naive["values"]), rtol=1e-3, atol=1e-4)
    print(f"all eigenpairs of {a.features} output-feature matrices, d_model {a.d_model}, d_hidden {a.d_hidden}, float32, "
          f"{a.threads} threads (top {a.keep} kept per feature)")
    print(f"  ours : {ours['seconds']:.1f} s (target <= 60 s: {'met' if ours['seconds'] <= 60 else 'NOT met'}), "
          f"peak RSS {ours['peak_mib']:.0f} MiB (+{ours['extra_mib']:.0f} MiB during the computation)")
    print(f"  naive: {naive['seconds']:.1f} s, peak RSS {naive['peak_mib']:.0f} MiB (+{naive['extra_mib']:.0f} MiB; "
          f"the (d_out, d, d) tensor alone is {a.d_model ** 3 * 4 / 2**20:.0f} MiB)")
    print(f"  time ratio ours/naive {ours['seconds'] / naive['seconds']:.2f}; extra-memory ratio naive/ours "
          f"{naive['extra_mib'] / max(ours['extra_mib'], 1e-9):.2f}; eigenvalues agree: {same}")


if __name__ == "__main__":
    main()
