"""Training throughput of the LM at a scale's config: tokens/s and model FLOP utilisation (MFU).

MFU = (tokens/s x training FLOPs per token) / peak, where the peak is a dense float32 matmul measured in
this same process, on this machine, with the same threads (DESIGN.md principle 7: ratios against a bare
PyTorch baseline). FLOPs per token: 6 x non-embedding parameters + 6 x n_layer x n_ctx x d_model (causal
attention). The machine is shared, so run it when idle; numbers are the best of several repeats.

    python scripts/bench_lm.py [--scale cpu] [--mlp bilinear] [--steps 20] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def matmul_peak(n: int = 2048, repeats: int = 5, iters: int = 5) -> float:
    """Best dense float32 matmul throughput in FLOP/s for (n x n) @ (n x n)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up the thread pool
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - t0))
    return best


def compose(task: str, scale: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return hydra_compose(config_name="train", overrides=[f"task={task}", f"scale={scale}", *overrides])


def train_throughput(cfg, steps: int, repeats: int) -> dict:
    """Best tokens/s of forward + backward + AdamW on random tokens at the config's shapes."""
    from hydra.utils import instantiate

    torch.manual_seed(0)
    model = instantiate(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=cfg.train.weight_decay)
    B, T = int(cfg.train.batch_size), int(cfg.model.n_ctx)
    batch = torch.randint(0, int(cfg.model.vocab_size), (B, T + 1))

    def step():
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        best = max(best, B * T * steps / (time.perf_counter() - t0))
    return {"tokens_per_s": best, "flops_per_token": model.flops_per_token(T), "n_params": model.n_params(False),
            "batch_tokens": B * T}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="stories")
    ap.add_argument("--scale", default="cpu")
    ap.add_argument("--mlp", default="bilinear")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cfg = compose(args.task, args.scale, [f"model.mlp={args.mlp}"])
    peak = matmul_peak()
    res = train_throughput(cfg, args.steps, args.repeats)
    peak_after = matmul_peak()  # the machine is shared: bracket the measurement
    peak = max(peak, peak_after)
    achieved = res["tokens_per_s"] * res["flops_per_token"]
    out = {"task": args.task, "scale": args.scale, "mlp": args.mlp, "threads": torch.get_num_threads(), **res,
           "model_flops_per_s": achieved, "matmul_peak_flops_per_s": peak, "mfu": achieved / peak}
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
