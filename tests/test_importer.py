"""Importing the authors' released LM and SAEs (issue 6): fixtures in their format, offline.

The fixtures are written as their code saves models (config.json with their keys, model.safetensors with
their module names, a WordPiece tokenizer ending stories with [EOS]). The reference forward pass below is
written from their architecture (bilinear-decomposition src/language/transformer.py, src/shared/components.py)
with their tensor names, independently of our Transformer.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bilinear import checkpoint
from bilinear.analyses.lm_exactness import layer_exactness
from bilinear.dataio.stories import generate_story
from bilinear.dataio.tokenizer import EOT, load_tokenizer
from bilinear.errors import CheckpointError, ConfigError
from bilinear.importer import AUTHORS_TOKENIZER_JSON, import_lm, import_sae
from bilinear.models import load_run_model
from conftest import ROOT, run_cli

SIZES = {"n_head": 2, "n_layer": 2, "n_ctx": 16, "d_model": 16, "d_hidden": 24}


# --- fixtures in their format ---------------------------------------------------------------------------
def corpus(n: int, seed: int = 0) -> list[str]:
    return [generate_story(seed, i)[0].capitalize() for i in range(n)]


def their_tokenizer_json(texts: list[str]) -> str:
    """Their ts tokenizers: WordPiece, lowercase, punctuation split off, stories padded/ended with [EOS]."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=150, special_tokens=["[UNK]", "[EOS]"], show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok.to_str()


def their_inv_freq(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))  # their Rotary buffer


def their_lm_tensors(cfg: dict, vocab: int, seed: int = 0, emb_scale: float = 1.0, gains: bool = False,
                     out_name: str = "p", inv_freq: bool = True) -> dict[str, torch.Tensor]:
    """Random weights under their names. Their embedding keeps torch's N(0, 1) init (no _init_weights)."""
    g = torch.Generator().manual_seed(seed)
    d, h, L = cfg["d_model"], cfg["d_hidden"], cfg["n_layer"]
    lin = lambda o, i: torch.randn(o, i, generator=g) / math.sqrt(i)  # noqa: E731
    t = {"transformer.wte.weight": emb_scale * torch.randn(vocab, d, generator=g), "lm_head.weight": lin(vocab, d)}
    for i in range(L):
        p = f"transformer.h.{i}."
        t[p + "attn.qkv.weight"] = lin(3 * d, d)
        t[p + "attn.o.weight"] = lin(d, d)
        t[p + "mlp.w.weight"] = lin(2 * h, d)
        t[p + f"mlp.{out_name}.weight"] = lin(d, h)
        if inv_freq:
            t[p + "attn.rotary.inv_freq"] = their_inv_freq(d // cfg["n_head"])
        if gains:
            t[p + "n1.norm.weight"] = 0.5 + torch.rand(d, generator=g)
            t[p + "n2.norm.weight"] = 0.5 + torch.rand(d, generator=g)
    if gains:
        t["transformer.n_f.norm.weight"] = 0.5 + torch.rand(d, generator=g)
    return t


def write_their_lm(folder: Path, tok_json: str | None, extra_cfg: dict | None = None, **kw) -> tuple[dict, dict]:
    """config.json + model.safetensors (+ tokenizer.json) as their save_pretrained writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {**SIZES, "bilinear": True, "gate": None, "bias": False, "normalization": True, "tokenizer": "ts-4096",
           "repo": None, "architectures": ["Transformer"], "torch_dtype": "float32",
           "transformers_version": "4.44.2", **(extra_cfg or {})}
    vocab = json.loads(tok_json)["model"]["vocab"].__len__() if tok_json else 40
    tensors = their_lm_tensors(cfg, vocab, **kw)
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "model.safetensors"))
    if tok_json:
        (folder / "tokenizer.json").write_text(tok_json)
    return cfg, tensors


def write_their_sae(folder: Path, layer: int, site: str = "mlp-in", d: int = 16, expansion: int = 4, k: int = 5,
                    seed: int = 1, extra_cfg: dict | None = None) -> tuple[dict, dict]:
    """Their SAE folder: vars(SAEConfig) as config.json, w_enc / w_dec / b_dec as model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    n = d * expansion
    w_dec = torch.randn(d, n, generator=g)
    w_dec /= w_dec.norm(dim=-2, keepdim=True)
    tensors = {"w_dec.weight": w_dec, "w_enc.weight": (w_dec.T + 0.1 * torch.randn(n, d, generator=g)).contiguous(),
               "b_dec": 0.1 * torch.randn(d, generator=g)}
    cfg = {"point": [site, layer], "target": None, "lr": 1e-4, "in_batch": 32, "out_batch": 4096, "n_batches": 256,
           "n_buffers": 100, "d_model": d, "n_ctx": 256, "expansion": expansion, "k": k, "val_steps": 100,
           "dead_thresh": 2, "normalize": None, "init_scale": 1.0, "bilinear_encoder": False, "token_lookup": False,
           "decoder_decay": 0.0, "normalize_decoder": True, "encoder_bias": False, "passthrough": [], "tag": None,
           "kwargs": {}, **(extra_cfg or {})}
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "model.safetensors"))
    return cfg, tensors


# --- their forward pass, from their code ----------------------------------------------------------------
def _rms(x: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-8)  # their RMSNorm: eps 1e-8
    return y if gain is None else y * gain


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def their_forward(t: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) of their Transformer in eval mode (explicit masked softmax attention)."""
    L, H, d = cfg["n_layer"], cfg["n_head"], cfg["d_model"]
    hd, (B, T) = d // H, ids.shape
    freqs = torch.einsum("i,j->ij", torch.arange(T).float(), their_inv_freq(hd))
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    mask = torch.tril(torch.ones(T, T)) == 0
    scale = 1.0 / math.sqrt(2.0 * L) if cfg.get("scale_attn", True) else 1.0
    act = {None: lambda a: a, "relu": torch.relu, "silu": torch.nn.functional.silu}[cfg.get("gate")]
    x = t["transformer.wte.weight"][ids]
    for i in range(L):
        p = f"transformer.h.{i}."
        qkv = _rms(x, t.get(p + "n1.norm.weight")) @ t[p + "attn.qkv.weight"].T
        q, k, v = qkv.view(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)  # '(n n_head d_head) -> n batch n_head seq d_head'
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        scores = (q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(mask, -torch.inf)
        z = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, d)
        x = x + scale * z @ t[p + "attn.o.weight"].T
        left, right = (_rms(x, t.get(p + "n2.norm.weight")) @ t[p + "mlp.w.weight"].T).chunk(2, dim=-1)
        x = x + (act(left) * right) @ t.get(p + "mlp.p.weight", t.get(p + "mlp.o.weight")).T
    return _rms(x, t.get("transformer.n_f.norm.weight")) @ t["lm_head.weight"].T


def their_encode(t: dict[str, torch.Tensor], k: int, x: torch.Tensor) -> torch.Tensor:
    """Their SAE.encode: the top-k pre-activations kept as they are (negative ones included)."""
    pre = (x - t["b_dec"]) @ t["w_enc.weight"].T
    mask = torch.zeros_like(pre).scatter_(-1, pre.topk(k, dim=-1).indices, 1)
    return pre * mask


def run_script(*args: str) -> subprocess.CompletedProcess:
    """``python scripts/import_authors.py args`` as a user runs it."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "import_authors.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


@pytest.fixture(scope="module")
def tok_json() -> str:
    return their_tokenizer_json(corpus(200) + corpus(20, seed=1))


# --- tests ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", [
    {},
    {"extra_cfg": {"scale_attn": False}},
    {"gains": True, "out_name": "o", "inv_freq": False},
])
def test_every_tensor_lands_where_it_should(tmp_path, tok_json, variant):
    cfg, theirs = write_their_lm(tmp_path / "theirs", tok_json, **variant)
    run = import_lm(tmp_path / "theirs", tmp_path / "run")
    ours = load_file(str(run / "model.safetensors"))
    out_scale = math.sqrt(2 * cfg["n_layer"]) if cfg.get("scale_attn") is False else 1.0
    out = variant.get("out_name", "p")
    expected = {"embed.weight": theirs["transformer.wte.weight"], "head.weight": theirs["lm_head.weight"]}
    for i in range(cfg["n_layer"]):
        p, b = f"transformer.h.{i}.", f"blocks.{i}."
        expected[b + "attn.qkv.weight"] = theirs[p + "attn.qkv.weight"]
        expected[b + "attn.out.weight"] = theirs[p + "attn.o.weight"] * out_scale
        expected[b + "mlp.bilinear.proj.weight"] = theirs[p + "mlp.w.weight"]  # left (W) rows over right (V) rows
        expected[b + "mlp.W_out.weight"] = theirs[p + f"mlp.{out}.weight"]
        if variant.get("gains"):
            expected[b + "attn_norm.weight"] = theirs[p + "n1.norm.weight"]
            expected[b + "mlp_gain"] = theirs[p + "n2.norm.weight"]
    if variant.get("gains"):
        expected["final_norm.weight"] = theirs["transformer.n_f.norm.weight"]
    assert set(ours) == set(expected)
    for name, value in expected.items():
        assert torch.equal(ours[name], value), name
    run_cfg = checkpoint.load_config(run)
    assert run_cfg.task.name == "tinystories" and run_cfg.model.norm_eps == 1e-8
    assert run_cfg.model.norm_gain == bool(variant.get("gains")) and run_cfg.model.rope_base == 10000.0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["complete"] and metrics["imported_from"] == str((tmp_path / "theirs").resolve())
    assert metrics["source_config"] == cfg and checkpoint.is_complete(run)


@pytest.mark.parametrize("variant", [
    {},
    {"extra_cfg": {"scale_attn": False}},
    {"emb_scale": 1e-3},  # a residual stream of rms 1e-3: their eps (1e-8) and ours (1e-6) would differ by ~50%
    {"gains": True},
    {"extra_cfg": {"gate": "relu"}},
])
def test_imported_forward_equals_their_forward(tmp_path, tok_json, variant):
    cfg, theirs = write_their_lm(tmp_path / "theirs", tok_json, **variant)
    run = import_lm(tmp_path / "theirs", tmp_path / "run")
    model = load_run_model(run, checkpoint.load_config(run))
    ids = torch.randint(0, theirs["transformer.wte.weight"].shape[0], (3, cfg["n_ctx"]),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, ref = model(ids), their_forward(theirs, cfg, ids)
    assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_the_key_set_of_ts_medium_is_understood(tmp_path, tok_json):
    """tdooms/ts-medium's config.json keys (its hub page), at fixture sizes: unscaled attention, n_vocab, etc."""
    vocab = len(json.loads(tok_json)["model"]["vocab"])
    extra = {"_name_or_path": "tdooms/ts-l6-d512-e5-b", "scale_attn": False, "modifier": None, "n_vocab": vocab,
             "noise": None, "dataset": "tinystories"}
    cfg, theirs = write_their_lm(tmp_path / "theirs", tok_json, extra_cfg=extra)
    run = import_lm(tmp_path / "theirs", tmp_path / "run")
    model = load_run_model(run, checkpoint.load_config(run))
    ids = torch.randint(0, vocab, (2, cfg["n_ctx"]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ref = model(ids), their_forward(theirs, cfg, ids)
    assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert "folded" in json.loads((run / "metrics.json").read_text())["mapping"]["attention_scale"]


def test_tokenizer_end_of_text_is_renamed_and_ids_kept(tmp_path, tok_json):
    write_their_lm(tmp_path / "theirs", tok_json)
    run = import_lm(tmp_path / "theirs", tmp_path / "run")
    from tokenizers import Tokenizer

    original, ours = Tokenizer.from_str(tok_json), load_tokenizer(run)
    assert ours.token_to_id(EOT) == original.token_to_id("[EOS]")
    assert ours.get_vocab_size() == original.get_vocab_size()
    text = "once upon a time, lily was happy."
    assert ours.encode(text).ids == original.encode(text).ids
    assert (run / AUTHORS_TOKENIZER_JSON).read_text() == tok_json
    assert checkpoint.load_config(run).data.tokenizer == str((run / "tokenizer.json").resolve())


def test_without_a_tokenizer_offline_the_run_says_so(tmp_path):
    write_their_lm(tmp_path / "theirs", None)  # config names ts-4096; the hub is offline in tests
    run = import_lm(tmp_path / "theirs", tmp_path / "run")
    notes = json.loads((run / "metrics.json").read_text())["notes"]
    assert not (run / "tokenizer.json").exists() and "tdooms/ts-tokenizer-4096" in notes[0]
    assert checkpoint.load_config(run).data.tokenizer is None and checkpoint.is_complete(run)


def test_sae_import_round_trips(tmp_path, tok_json):
    write_their_lm(tmp_path / "theirs", tok_json)
    lm = import_lm(tmp_path / "theirs", tmp_path / "lm")
    cfg, theirs = write_their_sae(tmp_path / "sae_theirs", layer=1, site="mlp-in")
    run = import_sae(tmp_path / "sae_theirs", tmp_path / "sae", lm)
    run_cfg = checkpoint.load_config(run)
    assert run_cfg.task.name == "sae" and run_cfg.lm == str(lm.resolve())
    assert (run_cfg.sae.layer, run_cfg.sae.site) == (1, "mlp_in")
    assert (run_cfg.model.d_model, run_cfg.model.expansion, run_cfg.model.k) == (16, 4, 5)
    assert json.loads((run / "lm.json").read_text()) == {
        "path": str(lm.resolve()), "weights_sha256": checkpoint.file_sha256(lm / "model.safetensors")}
    assert checkpoint.is_complete(run)
    sae = load_run_model(run, run_cfg)
    assert torch.equal(sae.W_enc, theirs["w_enc.weight"]) and torch.equal(sae.W_dec, theirs["w_dec.weight"])
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        z, z_theirs = sae.encode(x), their_encode(theirs, cfg["k"], x)
        positive = z_theirs.topk(cfg["k"], dim=-1).values[:, -1] > 0  # k-th largest pre-activation positive
        assert positive.sum() > 200
        torch.testing.assert_close(z[positive], z_theirs[positive], rtol=0, atol=1e-6)
        torch.testing.assert_close(z, z_theirs.relu(), rtol=0, atol=1e-6)  # the documented difference
        torch.testing.assert_close(sae.decode(z), z @ theirs["w_dec.weight"].T + theirs["b_dec"], rtol=0, atol=1e-6)


def test_analyze_runs_on_an_imported_lm(tmp_path, tok_json):
    """Through the script, then `python -m analyze ... analyses=[lm_exactness]` on a local TinyStories fixture."""
    import datasets

    data_root = tmp_path / "data"
    (data_root / "tinystories" / "data").mkdir(parents=True)
    for split, texts in {"train": corpus(200), "validation": corpus(20, seed=1)}.items():
        datasets.Dataset.from_dict({"text": texts}).to_parquet(
            str(data_root / "tinystories" / "data" / f"{split}-00000-of-00001.parquet"))
    write_their_lm(tmp_path / "theirs", tok_json)
    proc = run_script("lm", str(tmp_path / "theirs"), "--out", str(tmp_path / "run"), "--data-root", str(data_root))
    assert proc.returncode == 0, proc.stderr
    run = Path(proc.stdout.strip().splitlines()[-1])
    assert run == tmp_path / "run"
    run_cli("analyze", f"ckpt={run}", "analyses=[lm_exactness]", f"data_root={data_root}")
    result = json.loads((run / "analysis" / "metrics.json").read_text())["lm_exactness"]
    assert result["applicable"] and result["rel_error"] <= 1e-4
    model = load_run_model(run, checkpoint.load_config(run))
    U = torch.randn(4, 16, dtype=torch.float64)
    assert layer_exactness(model, 1, torch.randint(0, 100, (2, 16)), U)["rel_error"] < 1e-5


@pytest.mark.parametrize("extra, error, match", [
    ({"bias": True}, ConfigError, "bias=True"),
    ({"attention2": True}, ConfigError, "attention2"),
    ({"gate": "gelu"}, ConfigError, "gate='gelu'"),
    ({"normalization": False}, ConfigError, "normalization=False"),
    ({"mlp": "blp"}, ConfigError, "unknown config key"),
    ({"n_vocab": 7}, CheckpointError, "n_vocab=7"),
])
def test_unsupported_lm_features_are_refused(tmp_path, tok_json, extra, error, match):
    write_their_lm(tmp_path / "theirs", tok_json, extra_cfg=extra)
    with pytest.raises(error, match=match):
        import_lm(tmp_path / "theirs", tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_unexpected_tensor_and_wrong_rotary_base_are_refused(tmp_path, tok_json):
    _, tensors = write_their_lm(tmp_path / "a", tok_json)
    save_file({**tensors, "transformer.h.0.attn.qkv.bias": torch.zeros(48)}, str(tmp_path / "a" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected tensor.*qkv.bias"):
        import_lm(tmp_path / "a", tmp_path / "run")
    tensors["transformer.h.1.attn.rotary.inv_freq"] = their_inv_freq(8, base=500.0)
    save_file(tensors, str(tmp_path / "a" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="inv_freq"):
        import_lm(tmp_path / "a", tmp_path / "run")


@pytest.mark.parametrize("extra, match", [
    ({"point": ["resid-mid", 1]}, "site 'resid_mid'"),
    ({"target": ["mlp-out", 1]}, "transcoder"),
    ({"encoder_bias": True}, "encoder bias"),
    ({"normalize": 3.0}, "normalize=3.0"),
    ({"d_model": 8}, "d_model=8"),
    ({"point": ["mlp-out", 5]}, "layer 5"),
])
def test_unsupported_saes_are_refused(tmp_path, tok_json, extra, match):
    write_their_lm(tmp_path / "theirs", tok_json)
    lm = import_lm(tmp_path / "theirs", tmp_path / "lm")
    write_their_sae(tmp_path / "sae_theirs", layer=1, extra_cfg=extra)
    with pytest.raises((ConfigError, CheckpointError), match=match):
        import_sae(tmp_path / "sae_theirs", tmp_path / "sae", lm)


def test_script_errors_are_one_line_and_exit_2(tmp_path, tok_json):
    write_their_lm(tmp_path / "missing", tok_json)
    (tmp_path / "missing" / "model.safetensors").unlink()
    write_their_lm(tmp_path / "unknown", tok_json, extra_cfg={"rms": True})
    _, tensors = write_their_lm(tmp_path / "shape", tok_json)
    tensors["transformer.h.1.mlp.w.weight"] = torch.zeros(40, 16)
    save_file(tensors, str(tmp_path / "shape" / "model.safetensors"))
    cases = {"missing": "no model.safetensors", "unknown": "unknown config key", "shape": "mlp.w.weight has shape",
             "absent/repo": "Hugging Face hub"}
    for name, match in cases.items():
        proc = run_script("lm", str(tmp_path / name) if "/" not in name else name, "--out", str(tmp_path / "o"))
        assert proc.returncode == 2, (name, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], (name, lines)
    assert not (tmp_path / "o").exists()
