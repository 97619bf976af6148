"""``samples``: sampled continuations of held-out prompts, so a person can read what an LM learned.

Prompts are the openings of held-out documents; on ``stories`` they add feeling clauses cut just before the
outcome verb, one per cell of the planted rule, so the rule can be read off the samples. Writes samples.md.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bilinear import checkpoint
from bilinear.analyses import register, write_json
from bilinear.dataio.tokenizer import EOT
from bilinear.models.transformer import generate
from bilinear.tasks.lm import split_documents

RULE_PROMPTS = [
    "once upon a time, there was a little girl named lily. lily was happy, so she",
    "once upon a time, there was a little girl named lily. lily was not happy, so she",
    "one day, tom went to the park. tom felt scared, so he",
    "one day, tom went to the park. tom felt never really scared, so he",
]


def heldout_prompts(ctx, n: int, n_tokens: int = 12) -> list[list[int]]:
    """The first ``n_tokens`` tokens of the first ``n`` held-out documents of at least that length."""
    docs = split_documents(ctx.token_data.val, ctx.tokenizer.token_to_id(EOT), 4 * n)
    return [d[:n_tokens] for d in docs if len(d) >= n_tokens][:n]


@register("samples", kinds=("lm",))
def samples(ctx, out: Path) -> dict:
    tok, model = ctx.tokenizer, ctx.model
    eot = tok.token_to_id(EOT)
    prompts = heldout_prompts(ctx, int(ctx.cfg.get("n_samples", 6)))
    if ctx.run_cfg.data.get("source") == "stories":
        prompts += [tok.encode(p).ids for p in RULE_PROMPTS]
    g = torch.Generator(device=ctx.device).manual_seed(0)
    rows = []
    for ids in prompts:
        prompt = torch.tensor([eot] + ids, device=ctx.device)
        full = generate(model, prompt, max_new_tokens=int(ctx.cfg.get("sample_tokens", 60)), temperature=0.8,
                        top_k=40, generator=g, stop_token=eot)
        rows.append({"prompt": tok.decode(ids), "continuation": tok.decode(full[len(prompt):].tolist())})
    lines = ["# Samples (temperature 0.8, top-k 40, seed 0)", ""]
    for r in rows:
        lines += [f"- **{r['prompt']}** {r['continuation']}", ""]
    checkpoint.write_text(out / "samples.md", "\n".join(lines))
    write_json(out / "samples.json", rows)
    return {"n_samples": len(rows), "examples": rows[-4:]}
