"""Issue 17 (beyond the paper): an interactive explorer of one run, one self-contained HTML file.

    python -m analyze ckpt=<run> analyses=[explorer]                          -> <run>/analysis/explorer/index.html
    python -m analyze ckpt=<lm run> saes=[<mlp_in SAE>,<mlp_out SAE>] analyses=[negation,lowrank,explorer]

The page opens straight from disk: no server, no network, no library. Its data is embedded as JSON and drawn by
the small vanilla script in ``explorer_page``. Everything shown is computed here, from the run's checked
decomposition (``RunContext.class_eigen``, claim C1) or, for an LM, from its bilinear form and SAEs.

Image runs (PAPER.md E1, E2, E4, E8):
    - per class, the top positive and top negative eigenvectors in pixel space with their eigenvalues, and the
      largest eigenvalues of each sign;
    - a truncation slider k: the test accuracy of the top-k classifier (k eigenpairs per class by |lambda|, every
      k from 0 to d) and the logits of the chosen test image at k, sum_{i<=k} lambda_ci (v_ci . z)^2;
    - for each pickable test image, E8's explanation of its top classes: sorted eigenvector activations, the top
      +/- eigenvectors by lambda and the ones that push this input most either way.
LM runs with an mlp_in and an mlp_out SAE of one layer (PAPER.md E11, E12):
    - a page per output feature (the top ones by top-2 |lambda| of Q~_a, and the negation pair when found): top
      activating held-out contexts with per-token activations, decoder cosine neighbours, the interaction
      submatrix of Q~_a = sym(D_in^T Q_a D_in) over its strongest input features, and the top eigenvectors of Q~_a
      as weights on input features;
    - the negation pair (negation/negation.json) and the low-rank correlations (lowrank/lowrank.json) when those
      analyses have run into the same analysis folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from bilinear import checkpoint
from bilinear.analyses import jsonable, register
from bilinear.analyses.explorer_page import render
from bilinear.analyses.sae_context import decode_tokens, layer_activations, require_saes, sae_pair
from bilinear.claims_table import paper
from bilinear.decompose import decompose_outputs, eigen_activations, interaction_matrices, reconstruct
from bilinear.features import BasisMap, sae_basis_eigen, sae_basis_eigvals, sae_basis_matrices
from bilinear.tasks.lm import windows

# image runs
N_VECTORS = 4  # top positive and top negative eigenvectors shown per class
N_SPECTRUM = 20  # largest eigenvalues of each sign in the class's bar chart
N_SAMPLES = 12  # pickable test images: the one with the smallest top-2 margin, then the first of each class
N_EXPLAINED = 3  # top classes explained per test image (E8)
N_BARS = 10  # largest positive and negative activations drawn per explained class
# LM runs
N_SEQUENCES = 64  # held-out windows whose activations give contexts and labels
N_FEATURES = 24  # output features with a page, by top-2 |lambda| of Q~_a (plus the negation pair)
N_CONTEXTS = 5  # top activating contexts per feature
CONTEXT_BEFORE, CONTEXT_AFTER = 10, 3  # tokens around the activating one
N_NEIGHBOURS = 5  # decoder cosine neighbours of each sign
N_INPUTS = 10  # input features in the interaction submatrix
N_EIGEN = 4  # eigenvectors of Q~_a shown, by |lambda|
N_EIGEN_INPUTS = 6  # input features listed per eigenvector
N_CHECK = 2048  # positions where the shown features' full decomposition is checked against e_a . MLP(x)


def quantize(v: torch.Tensor) -> list[int]:
    """A vector (n,) normalised by its max |value| to integers in [-127, 127] (the page draws it on a symmetric scale,
    PAPER.md E1's convention, so the normalisation loses nothing that is shown; 4x smaller than float text)."""
    v = v.double()
    m = float(v.abs().max()) or 1.0
    return torch.round(v / m * 127).to(torch.int64).tolist()


def rounded(t, digits: int = 5) -> list:
    """Floats to ``digits`` significant digits for the page (nested lists)."""
    a = np.asarray(t.detach().cpu().double() if isinstance(t, torch.Tensor) else t, dtype=np.float64)
    return [float(f"{x:.{digits}g}") for x in a.tolist()] if a.ndim == 1 else [rounded(row, digits) for row in a]


class VectorTable:
    """Pixel-space eigenvectors shown on the page, each stored once: (class, index) -> id."""

    def __init__(self, input_vectors: torch.Tensor, n_pix: int):
        self.iv, self.n_pix = input_vectors, n_pix
        self.ids: dict[tuple[int, int], int] = {}
        self.rows: list[list[int]] = []

    def id(self, c: int, i: int) -> int:
        key = (int(c), int(i))
        if key not in self.ids:
            self.ids[key] = len(self.rows)
            self.rows.append(quantize(self.iv[key[0], key[1], : self.n_pix]))
        return self.ids[key]


@torch.no_grad()
def truncation_accuracy(ctx, chunk: int = 1024) -> tuple[list[float], float]:
    """Test accuracy of the top-k classifier for every k = 0..r (r = d, k = r is the full model), and the model's own."""
    eig, form, data = ctx.class_eigen, ctx.form, ctx.image_data
    r = eig.values.shape[1]
    correct = torch.zeros(r + 1, dtype=torch.long)
    model_correct = 0
    for i in range(0, len(data.test_x), chunk):
        xb, yb = data.test_x[i : i + chunk], data.test_y[i : i + chunk]
        acts = eigen_activations(eig, form.to_z(xb))  # (n, C, r)
        logits_k = torch.cat([torch.zeros_like(acts[..., :1]), acts.cumsum(-1)], dim=-1)  # (n, C, r + 1)
        correct += (logits_k.argmax(1) == yb[:, None]).sum(0).cpu()
        model_correct += int((ctx.model(xb).argmax(-1) == yb).sum())
    n = len(data.test_x)
    return (correct.double() / n).tolist(), model_correct / n


def pick_samples(ctx, n: int) -> list[int]:
    """The test image with the smallest top-2 logit margin (E8's hard case), then the first test image of each class."""
    data = ctx.image_data
    with torch.no_grad():
        logits = torch.cat([ctx.model(data.test_x[i : i + 4096]) for i in range(0, len(data.test_x), 4096)])
    top2 = logits.topk(2, dim=-1).values
    chosen = [int((top2[:, 0] - top2[:, 1]).argmin())]
    for c in range(len(data.classes)):
        idx = (data.test_y == c).nonzero()
        if len(idx) and int(idx[0]) not in chosen:
            chosen.append(int(idx[0]))
    for i in range(len(data.test_x)):  # fewer classes than n: fill with the next test images
        if len(chosen) >= n:
            break
        if i not in chosen:
            chosen.append(i)
    return chosen[:n]


def image_payload(ctx) -> dict:
    """Everything the image page shows (see the module doc)."""
    eig, form, data = ctx.class_eigen, ctx.form, ctx.image_data
    C, r = eig.values.shape
    n_pix = int(np.prod(data.image_shape))
    table = VectorTable(eig.input_vectors, n_pix)
    classes = []
    for c in range(C):
        pos_i, pos_v = eig.positive_in(c, N_VECTORS)
        neg_i, neg_v = eig.negative_in(c, N_VECTORS)
        vals = eig.values[c]
        classes.append({
            "name": data.classes[c],
            "positive": [{"vec": table.id(c, i), "index": int(i), "lambda": float(v)} for i, v in zip(pos_i.tolist(), pos_v.tolist())],
            "negative": [{"vec": table.id(c, i), "index": int(i), "lambda": float(v)} for i, v in zip(neg_i.tolist(), neg_v.tolist())],
            "spectrum_positive": rounded(vals[vals > 0].sort(descending=True).values[:N_SPECTRUM]),
            "spectrum_negative": rounded(vals[vals < 0].sort().values[:N_SPECTRUM]),
        })
    acc, acc_model = truncation_accuracy(ctx)
    samples = []
    for index in pick_samples(ctx, N_SAMPLES):
        x = data.test_x[index]
        with torch.no_grad():
            logits = ctx.model(x[None])[0].double()
        acts = eigen_activations(eig, form.to_z(x[None]))[0]  # (C, r): lambda_ci (v_ci . z)^2, by |lambda|
        explained = []
        for c in logits.topk(min(N_EXPLAINED, C)).indices.tolist():
            a = acts[c]
            order = a.argsort(descending=True)
            shown = torch.cat([order[:N_BARS], order[-N_BARS:]]) if len(order) > 2 * N_BARS else order
            ip, ineg = eig.positive_in(c, 1)[0], eig.negative_in(c, 1)[0]
            picks = [("top + by λ", ip), ("top − by λ", ineg), ("most + for this input", order[:1]),
                     ("most − for this input", order[-1:])]
            explained.append({
                "class": c, "logit": float(logits[c]),
                "sum_positive": float(a.clamp_min(0).sum()), "sum_negative": float(a.clamp_max(0).sum()),
                "bars": [{"index": int(i), "act": float(a[i]), "lambda": float(eig.values[c, i])} for i in shown.tolist()],
                "vectors": [{"what": what, "vec": table.id(c, int(i[0])), "index": int(i[0]),
                             "lambda": float(eig.values[c, int(i[0])]), "act": float(a[int(i[0])])}
                            for what, i in picks if len(i)],
            })
        samples.append({"index": index, "label": int(data.test_y[index]),
                        "pixels": torch.round(x[:n_pix].double().clamp(0, 1) * 255).to(torch.int64).tolist(),
                        "logits": rounded(logits, 7), "acts": rounded(acts, 5), "explained": explained})
    return {
        "kind": "image", "run": ctx.run_dir.name, "task": str(ctx.run_cfg.task.name), "d_hidden": r,
        "image_shape": list(data.image_shape), "classes": [c["name"] for c in classes], "class_data": classes,
        "vectors": table.rows, "accuracy": rounded(acc, 6), "model_accuracy": acc_model,
        "train_test_acc": {k: ctx.metrics.get(k) for k in ("train_acc", "test_acc")}, "n_test": len(data.test_x),
        "samples": samples, "exactness_rel_error": ctx.shared_metrics.get("exactness_rel_error"),
    }


# --- language models -----------------------------------------------------------------------------------
def _analysis_json(ctx, name: str) -> dict | None:
    path = ctx.analysis_dir / name / f"{name}.json"
    return checkpoint.read_json(path) if path.exists() else None


def _context(tokenizer, tokens: torch.Tensor, acts: torch.Tensor, s: int, t: int) -> dict:
    """Tokens around (s, t) with the feature's activation on each: acts (S, T)."""
    lo, hi = max(0, t - CONTEXT_BEFORE), min(tokens.shape[1], t + CONTEXT_AFTER + 1)
    return {"tokens": decode_tokens(tokenizer, tokens[s, lo:hi].tolist()), "acts": rounded(acts[s, lo:hi], 3),
            "at": t - lo, "act": float(acts[s, t])}


def top_contexts(tokenizer, tokens: torch.Tensor, acts: torch.Tensor, n: int) -> list[dict]:
    """The ``n`` largest positive activations of one feature, acts (S, T), as contexts."""
    flat = acts.flatten()
    k = min(n, int((flat > 0).sum()))
    T = acts.shape[1]
    return [_context(tokenizer, tokens, acts, int(i) // T, int(i) % T) for i in flat.topk(k).indices.tolist()] if k else []


def _label(tokenizer, tokens, acts: torch.Tensor) -> str:
    """An input feature's label: the text up to its top-activating token, that token in [brackets]."""
    c = top_contexts(tokenizer, tokens, acts, 1)
    if not c:
        return "(never active)"
    words = c[0]["tokens"][: c[0]["at"] + 1]
    words[-1] = "[" + words[-1].strip() + "]"
    return "".join(words[-6:]).strip()


@torch.no_grad()
def lm_payload(ctx) -> dict:
    sae_in, sae_out = sae_pair(require_saes(ctx))
    layer = sae_out.layer
    model, tok = ctx.model, ctx.tokenizer
    val = ctx.token_data.val
    n = max(1, min(N_SEQUENCES, (len(val) - 1) // model.n_ctx))
    tokens = windows(val, np.arange(n) * model.n_ctx, model.n_ctx).to(ctx.device)  # the first held-out windows
    acts = layer_activations(model, tokens, layer)
    z_in = sae_in.model.encode(acts.mlp_in).cpu()  # (S, T, n_in)
    z_out = sae_out.model.encode(acts.mlp_out).cpu()  # (S, T, n_out)
    tokens = tokens.cpu()
    form = model.bilinear_form(layer).to(dtype=torch.float64, device="cpu")
    D = sae_in.model.W_dec.detach().double().cpu()  # (d, n_in)
    basis = BasisMap.of(D)
    rows = sae_out.model.W_enc.detach().double().cpu()  # (n_out, d): output directions e_a

    # rank output features by the top-2 |lambda| of Q~_a (the paper's recipe, PAPER.md E11), in chunks
    top2 = torch.cat([sae_basis_eigvals(interaction_matrices(form, rows[i : i + 16]), basis).abs()
                      .sort(-1, descending=True).values[:, :2].sum(-1) for i in range(0, rows.shape[0], 16)])
    negation = _analysis_json(ctx, "negation")
    lowrank = _analysis_json(ctx, "lowrank")
    chosen = top2.argsort(descending=True)[:N_FEATURES].tolist()
    for extra in (negation or {}).get("pair", []):
        if int(extra) not in chosen:
            chosen.append(int(extra))

    # the shown features' full decomposition reproduces e_a . MLP(x) on real inputs (DESIGN 3, claim C1)
    x = acts.mlp_in[:, 1:].flatten(0, 1)[:N_CHECK].double().cpu()
    y = acts.mlp_out[:, 1:].flatten(0, 1)[:N_CHECK].double().cpu()
    sel = rows[chosen]
    check = ctx.check_exact(reconstruct(decompose_outputs(form, sel), x), y @ sel.T,
                            f"e_a . MLP(x) for the {len(chosen)} output features of the explorer")

    dec = sae_out.model.W_dec.detach().double().cpu()
    dec = dec / dec.norm(dim=0, keepdim=True).clamp_min(1e-30)
    cos_all = dec.T @ dec  # (n_out, n_out) decoder cosines
    labels: dict[int, str] = {}

    def label(i: int) -> str:
        if i not in labels:
            labels[i] = _label(tok, tokens, z_in[..., i])
        return labels[i]

    features = []
    for a in chosen:
        Q = interaction_matrices(form, rows[a : a + 1])  # (1, d, d) on mlp_in
        Qt = sae_basis_matrices(Q, D)[0]  # (n_in, n_in)
        inter = 2 * Qt - torch.diag(torch.diagonal(Qt))  # off-diagonal: cross-interactions 2 Q~_bc; diagonal: self
        strength = inter.abs().amax(1)
        shown = strength.argsort(descending=True)[:N_INPUTS].tolist()
        eig = sae_basis_eigen(Q, basis, keep=N_EIGEN)
        eigvecs = []
        for j in range(eig.values.shape[1]):
            w = eig.vectors[0, j]
            top = w.abs().argsort(descending=True)[:N_EIGEN_INPUTS].tolist()
            eigvecs.append({"lambda": float(eig.values[0, j]),
                            "inputs": [{"id": int(i), "weight": float(w[i]), "label": label(int(i))} for i in top]})
        cos = cos_all[a].clone()
        cos[a] = float("nan")
        finite = torch.nan_to_num(cos, nan=-2.0)
        pos = finite.argsort(descending=True)[:N_NEIGHBOURS].tolist()
        neg = torch.nan_to_num(cos, nan=2.0).argsort()[:N_NEIGHBOURS].tolist()
        za = z_out[..., a]
        features.append({
            "id": int(a), "top2": float(top2[a]), "n_active": int((za > 0).sum()), "max_act": float(za.max()),
            "contexts": top_contexts(tok, tokens, za, N_CONTEXTS),
            "neighbours": [{"id": int(i), "cos": float(cos[i])} for i in pos],
            "anti_neighbours": [{"id": int(i), "cos": float(cos[i])} for i in neg],
            "interaction": {"inputs": shown, "labels": [label(i) for i in shown], "matrix": rounded(inter[shown][:, shown], 4)},
            "eigen": eigvecs,
        })
    neg_summary = None
    if negation:
        neg_summary = {k: negation.get(k) for k in ("pair", "decoder_cosine", "layer")}
        neg_summary["paper_decoder_cosine"] = paper("C12")["decoder_cosine"]  # the one table of the paper's numbers
        neg_summary["outputs"] = [{k: o.get(k) for k in ("feature", "type")} for o in negation.get("outputs", [])]
        neg_summary["top2_approximation"] = negation.get("top2_approximation")
    low_summary = None
    if lowrank:
        low_summary = {k: lowrank.get(k) for k in ("ks", "mean_corr", "median_corr", "fraction_above_k2", "n_features_kept",
                                                  "n_features", "mean_corr_k1", "mean_corr_k2")}
    return {
        "kind": "lm", "run": ctx.run_dir.name, "task": str(ctx.run_cfg.task.name), "layer": layer,
        "input_sae": {"name": sae_in.name, "dir": sae_in.dir.name, "n": int(sae_in.model.n_latents)},
        "output_sae": {"name": sae_out.name, "dir": sae_out.dir.name, "n": int(sae_out.model.n_latents)},
        "n_sequences": int(tokens.shape[0]), "features": features, "negation": neg_summary, "lowrank": low_summary,
        "exactness_rel_error": check["exactness_rel_error"],
    }


@register("explorer", kinds=("image", "lm"), default=False)
def explorer(ctx, out: Path) -> dict:
    """Write <analysis>/explorer/index.html (one file: data, style and script inline)."""
    data = lm_payload(ctx) if ctx.kind == "lm" else image_payload(ctx)
    html = render(json.dumps(jsonable(data), separators=(",", ":"), allow_nan=False))
    path = out / "index.html"
    with checkpoint.atomic_path(path) as tmp:
        Path(tmp).write_text(html, encoding="utf-8")
    result = {"page": str(path), "bytes": len(html.encode()), "kind": data["kind"]}
    if data["kind"] == "image":
        result.update({"n_samples": len(data["samples"]), "n_vectors": len(data["vectors"]),
                       "accuracy_full_k": data["accuracy"][-1], "model_accuracy": data["model_accuracy"]})
    else:
        result.update({"n_features": len(data["features"]), "negation": data["negation"] is not None,
                       "lowrank": data["lowrank"] is not None, "exactness_rel_error": data["exactness_rel_error"]})
    print(f"[explorer] open {path} in a browser (no server needed)", flush=True)
    return result
