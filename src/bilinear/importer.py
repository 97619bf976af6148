"""Import the paper authors' released language models and SAEs into our run directories (issue 6).

The authors publish their models on the HF hub in their own format: a folder with ``config.json`` (a
``transformers.PretrainedConfig``) and ``model.safetensors`` (their module names). What follows is read
from their code, ``tdooms/bilinear-decomposition`` (src/language/transformer.py, src/shared/components.py,
src/sae/sae.py) and ``tdooms/bilinear-interp`` (language/transformer.py, shared/components.py, sae/sae.py,
language/utils.py), and from their hub config of ``tdooms/ts-medium``.

Language model, per layer ``i`` (their name, shape -> ours)::

    transformer.wte.weight              (V, d)       -> embed.weight
    transformer.h.i.attn.qkv.weight     (3d, d)      -> blocks.i.attn.qkv.weight         rows (q|k|v, head, d_head)
    transformer.h.i.attn.o.weight       (d, d)       -> blocks.i.attn.out.weight         x sqrt(2 L) if scale_attn=false
    transformer.h.i.mlp.w.weight        (2 d_h, d)   -> blocks.i.mlp.bilinear.proj.weight  left rows (W) over right (V)
    transformer.h.i.mlp.p.weight        (d, d_h)     -> blocks.i.mlp.W_out.weight        P; "mlp.o" in some versions
    transformer.h.i.n1[.norm].weight    (d,)         -> blocks.i.attn_norm.weight        only when a checkpoint has
    transformer.h.i.n2[.norm].weight    (d,)         -> blocks.i.mlp_gain                gains that are not all 1
    transformer.n_f[.norm].weight       (d,)         -> final_norm.weight                (then model.norm_gain=true)
    lm_head.weight                      (V, d)       -> head.weight                      untied, as ours
    transformer.h.i.attn.rotary.inv_freq (d_head/2,) -> checked; gives model.rope_base (our tables are not stored)

Both models rotate the pairs (x_j, x_{j+d_head/2}) (their ``rotate_half`` with ``cat(freqs, freqs)``), so q and
k rows need no permutation; both scale scores by 1/sqrt(d_head), pre-norm with RMSNorm, and scale the
attention branch by 1/sqrt(2 n_layer) (theirs unless ``scale_attn: false``, which we fold into the output
projection). Their RMSNorm has eps 1e-8, our default 1e-6: the imported config sets
``model.norm_eps`` to theirs, so the function is the same. ``gate`` relu / silu become our ReGLU / SwiGLU.
Biases, a norm bias, ``attention2``, plain (non-gated) MLPs, a GELU gate and no normalization are refused.

SAE (their ``SAE``: ``encode = topk-mask(w_enc(x - b_dec))``, ``decode = w_dec(z) + b_dec``)::

    w_enc.weight (n, d) -> W_enc      w_dec.weight (d, n) -> W_dec      b_dec (d,) -> b_dec

Their encoder keeps the k largest pre-activations even when negative; ours (TopKSAE) then applies a ReLU,
so ours = ReLU(theirs): identical whenever the k-th largest pre-activation is positive. Encoder biases,
bilinear encoders, token lookups, pass-through dimensions, input ``normalize`` and sites other than
mlp_in / mlp_out are refused.

Sources are a local folder, or a hub repo id (``owner/name``, optionally ``owner/name/subfolder`` for the
SAE folders of a ``*-scope`` repo) fetched with ``huggingface_hub.snapshot_download``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from bilinear import checkpoint
from bilinear.config import project_root
from bilinear.errors import CheckpointError, ConfigError
from bilinear.tasks.sae import LM_REF, SAE_SITES, open_lm_run

AUTHORS_NORM_EPS = 1e-8  # shared/components.py: RMSNorm.eps
CONFIG_JSON, WEIGHTS = "config.json", "model.safetensors"
TOKENIZER_JSON, AUTHORS_TOKENIZER_JSON = "tokenizer.json", "authors_tokenizer.json"

# Their Transformer.get_tokenizer: config "tokenizer" name -> (hub repo, the token they pad/end stories with).
AUTHORS_TOKENIZERS = {
    "ts-4096": ("tdooms/ts-tokenizer-4096", "[EOS]"),
    "gpt2": ("openai-community/gpt2", "<|endoftext|>"),
    "mistral": ("mistral-community/Mixtral-8x22B-v0.1", "</s>"),
}
DATASET_TASKS = {"tinystories": "tinystories", "ts": "tinystories", "fineweb": "fineweb", "fw": "fineweb"}

# --- config.json keys of their LM ------------------------------------------------------------------------
LM_SHAPE_KEYS = ("n_layer", "n_head", "n_ctx", "d_model", "d_hidden")
# key -> (the values we can represent, what the key does in their code)
LM_FIXED_KEYS = {
    "bilinear": ((True,), "a non-gated MLP"),
    "bias": ((False,), "biases in qkv and the MLP"),
    "norm_bias": ((False,), "a bias in RMSNorm"),
    "attention2": ((False,), "bilinear attention (Attention2)"),
    "modifier": ((None,), "a modifier, which no code we read defines"),
}
LM_OPTION_KEYS = ("gate", "normalization", "scale_attn", "n_vocab")
LM_IGNORED_KEYS = (
    "noise",  # their Noise module acts only in training mode
    "tokenizer", "dataset", "repo",  # bookkeeping of their code (the tokenizer is fetched separately)
    "_name_or_path", "architectures", "torch_dtype", "transformers_version", "model_type", "_from_model_config",
    "tie_word_embeddings",  # their Transformer defines no output embeddings, so HF never ties lm_head
)

# --- config.json keys of their SAE (SAEConfig, saved as vars(config)) -------------------------------------
SAE_FIXED_KEYS = {
    "normalize": ((None,), "an input scale that their SAE applies in preprocess/postprocess only"),
    "bilinear_encoder": ((False,), "a bilinear encoder"),
    "token_lookup": ((False,), "a token lookup table"),
    "encoder_bias": ((False,), "an encoder bias"),
}
SAE_TRAINING_KEYS = ("lr", "in_batch", "out_batch", "n_batches", "n_buffers", "n_ctx", "val_steps", "dead_thresh",
                     "init_scale", "decoder_decay", "normalize_decoder", "tag", "kwargs")


# --- fetching and reading -------------------------------------------------------------------------------
@dataclass
class Source:
    """A folder holding an import's files, and where it came from (for metrics.json)."""

    folder: Path
    origin: str
    revision: str | None = None


HUB_ID = re.compile(r"^([A-Za-z0-9][\w.-]*/[\w.-]+)(?:/(.+))?$")


def fetch(src: str | Path, files: tuple[str, ...], revision: str | None = None) -> Source:
    """A local folder, or ``owner/name[/subfolder]`` downloaded from the HF hub (only ``files``)."""
    path = Path(src)
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path}: not a folder (expected one with {CONFIG_JSON} and {WEIGHTS})")
        return Source(path, str(path.resolve()))
    m = HUB_ID.match(str(src))
    if not m:
        raise CheckpointError(f"{src}: no such folder, and not a Hugging Face repo id (owner/name[/subfolder])")
    repo, sub = m.group(1), m.group(2)
    patterns = [f"{sub}/{f}" if sub else f for f in files]
    try:
        from huggingface_hub import snapshot_download  # lazy: only imports need the hub

        local = Path(snapshot_download(repo_id=repo, revision=revision, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, network: one clear line
        first = (str(e).strip().splitlines() or [""])[0][:100]
        raise CheckpointError(f"{src}: no such folder, and the Hugging Face hub gave no {repo} "
                              f"({e.__class__.__name__}: {first}); go online or pass a local folder with "
                              f"{CONFIG_JSON} and {WEIGHTS}") from None
    commit = local.name if local.parent.name == "snapshots" else revision
    return Source(local / sub if sub else local, f"hf:{repo}" + (f"/{sub}" if sub else ""), commit)


def read_config_json(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_JSON
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_JSON}")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e.__class__.__name__})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def read_tensors(folder: Path) -> dict[str, Tensor]:
    """Their ``model.safetensors`` as float32 tensors (never a pickle: ``pytorch_model.bin`` is refused)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS
    if not path.is_file():
        other = " (only safetensors are read: a pickle can run code)" if (folder / "pytorch_model.bin").exists() else ""
        raise CheckpointError(f"{folder}: no {WEIGHTS}{other}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors file ({str(e).splitlines()[0][:80]})") from None
    return {k: v.float() for k, v in tensors.items()}


def check_keys(cfg: dict[str, Any], path: Path, known: set[str], fixed: dict[str, tuple[tuple, str]]) -> None:
    """ConfigError for an unknown key, or a known key whose value asks for something we cannot represent."""
    unknown = sorted(set(cfg) - known - set(fixed))
    if unknown:
        raise ConfigError(f"{path}: unknown config key(s) {unknown}; not a model written by the authors' code we read")
    for key, (ok, what) in fixed.items():
        if key in cfg and cfg[key] not in ok:
            raise ConfigError(f"{path}: {key}={cfg[key]!r} ({what}) is not supported by the suite's models")


class Tensors:
    """Their tensors, handed out by name; whatever is never taken is reported as unexpected."""

    def __init__(self, tensors: dict[str, Tensor], where: Path):
        self.tensors, self.where, self.taken = tensors, where, set()

    def has(self, name: str) -> bool:
        return name in self.tensors

    def take(self, *names: str) -> tuple[str, Tensor]:
        """(name, tensor) for the first of ``names`` present (alternative spellings of one tensor)."""
        for name in names:
            if name in self.tensors:
                self.taken.add(name)
                return name, self.tensors[name]
        also = f" (or {', '.join(names[1:])})" if names[1:] else ""
        raise CheckpointError(f"{self.where}: missing tensor {names[0]}{also}")

    def check_all_taken(self) -> None:
        left = sorted(set(self.tensors) - self.taken)
        if left:
            raise CheckpointError(f"{self.where}: unexpected tensor(s) {left[:4]}; the model has parts the suite "
                                  "cannot represent")


# --- the language model ---------------------------------------------------------------------------------
@dataclass
class LMSpec:
    """Our Transformer's settings for one of their checkpoints."""

    n_layer: int
    n_head: int
    n_ctx: int
    d_model: int
    d_hidden: int
    vocab_size: int
    mlp: str  # bilinear | reglu | swiglu
    scale_attn: bool  # theirs scales the attention branch by 1/sqrt(2 n_layer)
    norm_gain: bool = False
    rope_base: float = 10000.0


def lm_spec(cfg: dict[str, Any], tensors: dict[str, Tensor], path: Path) -> LMSpec:
    """Validate their config.json and derive our settings (vocabulary size from the embedding)."""
    check_keys(cfg, path, set(LM_SHAPE_KEYS) | set(LM_OPTION_KEYS) | set(LM_IGNORED_KEYS), LM_FIXED_KEYS)
    missing = [k for k in LM_SHAPE_KEYS if k not in cfg]
    if missing:
        raise ConfigError(f"{path}: missing config key(s) {missing}")
    for k in LM_SHAPE_KEYS:
        if not isinstance(cfg[k], int) or isinstance(cfg[k], bool) or cfg[k] < 1:
            raise ConfigError(f"{path}: {k} must be a positive integer, got {cfg[k]!r}")
    if cfg.get("normalization", True) not in (True, "rms"):
        raise ConfigError(f"{path}: normalization={cfg['normalization']!r} is not supported (the suite's models "
                          "pre-norm with RMSNorm)")
    # their gate: None | "relu" | "silu" | "gelu" (bilinear-decomposition), or a bool meaning ReLU (bilinear-interp)
    gates = {None: "bilinear", False: "bilinear", "relu": "reglu", True: "reglu", "silu": "swiglu"}
    gate = cfg.get("gate")
    if gate not in gates:
        raise ConfigError(f"{path}: gate={gate!r} is not supported (bilinear, relu or silu)")
    scale_attn = cfg.get("scale_attn", True)  # the paper's code has no such key and always scales
    if not isinstance(scale_attn, bool):
        raise ConfigError(f"{path}: scale_attn must be true or false, got {scale_attn!r}")
    if "transformer.wte.weight" not in tensors:
        raise CheckpointError(f"{path.parent}: missing tensor transformer.wte.weight")
    vocab = int(tensors["transformer.wte.weight"].shape[0])
    if cfg.get("n_vocab") not in (None, vocab):
        raise CheckpointError(f"{path.parent}: n_vocab={cfg['n_vocab']} but transformer.wte.weight has {vocab} rows")
    return LMSpec(cfg["n_layer"], cfg["n_head"], cfg["n_ctx"], cfg["d_model"], cfg["d_hidden"], vocab,
                  gates[gate], scale_attn)


def rope_base_of(inv_freqs: list[Tensor], head_dim: int, where: Path) -> float:
    """The base b of their rotary frequencies inv_freq_j = b^(-2j/d_head), checked on every layer's buffer."""
    if not inv_freqs:
        return 10000.0  # their Rotary's default base, when the buffer was not saved
    f = inv_freqs[0].double()
    base = float(f[1] ** (-head_dim / 2)) if f.numel() > 1 else 10000.0
    # the buffer is float32; their Rotary takes an integer base, so snap to it when it is that close
    base = float(round(base)) if abs(base - round(base)) <= 1e-4 * base else base
    expected = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    for t in inv_freqs:
        if t.shape != expected.shape or not torch.allclose(t.double(), expected, rtol=1e-5, atol=0):
            raise CheckpointError(f"{where}: rotary inv_freq is not base^(-2j/d_head) for one base; not supported")
    return base


def norm_gains(t: Tensors, spec: LMSpec) -> dict[str, tuple[str, Tensor]] | None:
    """Their RMSNorm gains (ours -> (their name, gain)), or None when the checkpoint has none (the paper's code)."""
    def names(prefix: str) -> tuple[str, str]:
        return f"{prefix}.norm.weight", f"{prefix}.weight"

    wanted = {"final_norm.weight": names("transformer.n_f")}
    for i in range(spec.n_layer):
        wanted[f"blocks.{i}.attn_norm.weight"] = names(f"transformer.h.{i}.n1")
        wanted[f"blocks.{i}.mlp_gain"] = names(f"transformer.h.{i}.n2")
    present = {ours: any(t.has(n) for n in theirs) for ours, theirs in wanted.items()}
    if not any(present.values()):
        return None
    if not all(present.values()):
        raise CheckpointError(f"{t.where}: RMSNorm gains on some norms only; not supported")
    return {ours: t.take(*theirs) for ours, theirs in wanted.items()}


def lm_state(t: Tensors, spec: LMSpec) -> dict[str, tuple[str, Tensor]]:
    """Our state dict (name -> (their name, tensor)) from theirs, with the documented mapping applied.

    Also sets what the tensors decide: ``spec.norm_gain`` (gains that are not all 1) and ``spec.rope_base``.
    """
    out_scale = 1.0 if spec.scale_attn else math.sqrt(2 * spec.n_layer)  # ours always multiplies by 1/sqrt(2 L)
    state = {"embed.weight": t.take("transformer.wte.weight"), "head.weight": t.take("lm_head.weight")}
    for i in range(spec.n_layer):
        h, b = f"transformer.h.{i}", f"blocks.{i}"
        state[f"{b}.attn.qkv.weight"] = t.take(f"{h}.attn.qkv.weight")
        name, o = t.take(f"{h}.attn.o.weight")
        state[f"{b}.attn.out.weight"] = (name, o * out_scale)
        state[f"{b}.mlp.bilinear.proj.weight"] = t.take(f"{h}.mlp.w.weight")
        state[f"{b}.mlp.W_out.weight"] = t.take(f"{h}.mlp.p.weight", f"{h}.mlp.o.weight")
    gains = norm_gains(t, spec)
    if gains is not None and not all(bool((g == 1).all()) for _, g in gains.values()):
        spec.norm_gain = True
        state.update(gains)
    inv = [t.take(f"transformer.h.{i}.attn.rotary.inv_freq")[1] for i in range(spec.n_layer)
           if t.has(f"transformer.h.{i}.attn.rotary.inv_freq")]
    spec.rope_base = rope_base_of(inv, spec.d_model // spec.n_head, t.where)
    t.check_all_taken()
    return state


def compose_train_config(overrides: list[str]) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides``, as ``python -m train`` would (no Hydra run needed)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base=None):
        return compose(config_name="train", overrides=overrides)


def lm_run_config(spec: LMSpec, task: str, data_root: str, tokenizer: Path | None) -> DictConfig:
    """A ``task=<tinystories|fineweb> scale=paper`` config with their sizes, with their RMSNorm epsilon."""
    cfg = compose_train_config([
        f"task={task}", "scale=paper", f"data.vocab_size={spec.vocab_size}", f"model.n_ctx={spec.n_ctx}",
        f"model.d_model={spec.d_model}", f"model.n_layer={spec.n_layer}", f"model.n_head={spec.n_head}",
        f"model.d_hidden={spec.d_hidden}", f"model.mlp={spec.mlp}", f"model.norm_gain={str(spec.norm_gain).lower()}",
        f"model.rope_base={float(spec.rope_base)!r}",         f"model.norm_eps={AUTHORS_NORM_EPS!r}",
    ])
    # paths go in after composing: Hydra's override grammar would misread some characters in them
    OmegaConf.update(cfg, "data_root", str(data_root))
    OmegaConf.update(cfg, "data.tokenizer", str(tokenizer.resolve()) if tokenizer else None)
    return cfg


def build_model(cfg: DictConfig, state: dict[str, tuple[str, Tensor]], where: Path) -> torch.nn.Module:
    """Our model from ``cfg`` with ``state`` loaded; a shape that does not fit names their tensor.

    The shapes are compared on the meta device first (no memory): a 1 KB config.json claiming a huge
    width or context must be refused before anything of that size is allocated.
    """
    from bilinear.models.registry import build_model as build_allowed
    from bilinear.models.registry import check_allocation

    try:
        meta = build_allowed(cfg.model, device="meta")
        check_allocation(meta, sum(t.numel() * t.element_size() for _, t in state.values()), str(where))
    except ConfigError as e:
        raise CheckpointError(f"{where}: its config.json describes no model we can load ({str(e).removeprefix('config: ')})") from None
    expected = meta.state_dict()
    for ours, (theirs, tensor) in state.items():
        if ours not in expected or tuple(tensor.shape) != tuple(expected[ours].shape):
            need = tuple(expected[ours].shape) if ours in expected else "no such tensor"
            raise CheckpointError(f"{where}: {theirs} has shape {tuple(tensor.shape)}, but its config.json needs {need}")
    model = build_allowed(cfg.model)
    model.load_state_dict({k: v for k, (_, v) in state.items()}, strict=True)
    return model.eval()


# --- the tokenizer --------------------------------------------------------------------------------------
def _rename(obj: Any, old: str, new: str) -> Any:
    """``obj`` (parsed tokenizer JSON) with every string and key equal to ``old`` replaced by ``new``."""
    if isinstance(obj, dict):
        return {(new if k == old else k): _rename(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rename(v, old, new) for v in obj]
    return new if obj == old else obj


def adapt_tokenizer(text: str, eos: str | None, where: Path) -> tuple[str, str | None]:
    """(tokenizer JSON our loader accepts, the token renamed or None).

    The suite separates documents with ``<|endoftext|>``; theirs end stories with ``eos`` (``[EOS]`` for
    ts-4096). Renaming that one token keeps every id, so the model's inputs and outputs are unchanged.
    """
    from tokenizers import Tokenizer

    from bilinear.dataio.tokenizer import EOT

    try:
        tok = Tokenizer.from_str(text)
    except Exception as e:  # noqa: BLE001 - tokenizers raises bare Exceptions on bad JSON
        raise CheckpointError(f"{where}: unreadable tokenizer ({str(e).splitlines()[0][:80]})") from None
    if tok.token_to_id(EOT) is not None:
        return text, None
    candidates = [eos] if eos else ["[EOS]", "</s>"]
    found = next((c for c in candidates if c and tok.token_to_id(c) is not None), None)
    if found is None:
        raise CheckpointError(f"{where}: the tokenizer has no end-of-text token ({EOT} or {', '.join(candidates)})")
    renamed = json.dumps(_rename(json.loads(text), found, EOT), ensure_ascii=False)
    new = Tokenizer.from_str(renamed)
    if new.token_to_id(EOT) != tok.token_to_id(found) or new.get_vocab_size() != tok.get_vocab_size():
        raise CheckpointError(f"{where}: renaming {found} to {EOT} changed the tokenizer's ids")
    return renamed, found


def find_tokenizer(folder: Path, cfg: dict[str, Any], tokenizer: str | Path | None,
                   notes: list[str]) -> tuple[Path | None, str | None]:
    """(their tokenizer.json, its end-of-text token): given, beside the weights, or the repo their code names."""
    name = cfg.get("tokenizer")
    eos = AUTHORS_TOKENIZERS.get(name, (None, None))[1]
    if tokenizer is not None:
        given = Path(tokenizer)
        path = given if given.is_file() else fetch(tokenizer, (TOKENIZER_JSON,)).folder / TOKENIZER_JSON
    elif (folder / TOKENIZER_JSON).is_file():
        path = folder / TOKENIZER_JSON
    elif name in AUTHORS_TOKENIZERS:
        repo = AUTHORS_TOKENIZERS[name][0]
        try:
            path = fetch(repo, (TOKENIZER_JSON,)).folder / TOKENIZER_JSON
        except CheckpointError:
            notes.append(f"no tokenizer: config.json names {name!r} ({repo}), which could not be downloaded; "
                         f"import again online, or with --tokenizer <tokenizer.json>")
            return None, None
    else:
        notes.append(f"no tokenizer: none beside the weights, and config.json's tokenizer={name!r} is not one the "
                     "authors' code maps to a repo; import again with --tokenizer <tokenizer.json>")
        return None, None
    if not path.is_file():
        raise CheckpointError(f"{path}: no tokenizer file")
    return path, eos


@dataclass
class TokenizerFiles:
    """Their tokenizer as read, and as our loader takes it (``adapted``); ``info`` goes into metrics.json."""

    original: str
    adapted: str
    renamed: str | None
    info: dict[str, Any]


def read_tokenizer(path: Path, eos: str | None, vocab_size: int) -> TokenizerFiles:
    """Their tokenizer.json, adapted (end-of-text renamed) and checked against the embedding's size."""
    from tokenizers import Tokenizer

    original = path.read_text(encoding="utf-8")
    adapted, renamed = adapt_tokenizer(original, eos, path)
    n = Tokenizer.from_str(adapted).get_vocab_size()
    if n > vocab_size:
        raise CheckpointError(f"{path}: the tokenizer has {n} tokens but the model embeds only {vocab_size}")
    return TokenizerFiles(original, adapted, renamed, {"source": str(path), "renamed_to_endoftext": renamed,
                                                       "vocab_size": n})


def write_tokenizer(run_dir: Path, tok: TokenizerFiles) -> None:
    """<run>/tokenizer.json (what analyses decode with), and the untouched original when a token was renamed."""
    if tok.renamed:
        checkpoint.write_text(run_dir / AUTHORS_TOKENIZER_JSON, tok.original)
    checkpoint.write_text(run_dir / TOKENIZER_JSON, tok.adapted)


# --- run directories ------------------------------------------------------------------------------------
def check_out(out_dir: str | Path, overwrite: bool) -> Path:
    """The output run directory, refused when it already holds a run (the writes create it)."""
    out = Path(out_dir)
    if (out / checkpoint.CONFIG).exists() and not overwrite:
        raise CheckpointError(f"{out}: already a run directory; choose another --out or pass --overwrite")
    return out


def provenance(src: Source, cfg: dict[str, Any]) -> dict[str, Any]:
    return {"imported_from": src.origin, "revision": src.revision, "source_config": cfg,
            "source_weights_sha256": checkpoint.file_sha256(src.folder / WEIGHTS)}


def import_lm(src: str | Path, out_dir: str | Path, tokenizer: str | Path | None = None, data_root: str = "data",
              task: str | None = None, revision: str | None = None, overwrite: bool = False) -> Path:
    """Write an LM run directory from one of their language models; returns it.

    Args:
        src: a folder with config.json + model.safetensors, or a hub repo id (e.g. ``tdooms/ts-medium``).
        tokenizer: their tokenizer.json (file, folder or repo id); default: beside the weights, else the repo
            their code names for config.json's ``tokenizer`` (ts-4096 -> tdooms/ts-tokenizer-4096).
        data_root: the run's data root (where the corpus and its token cache live).
        task: tinystories | fineweb; default from config.json's ``dataset``, else tinystories.
    """
    out = check_out(out_dir, overwrite)
    source = fetch(src, (CONFIG_JSON, WEIGHTS, TOKENIZER_JSON), revision)
    cfg = read_config_json(source.folder)
    tensors = read_tensors(source.folder)
    spec = lm_spec(cfg, tensors, source.folder / CONFIG_JSON)
    state = lm_state(Tensors(tensors, source.folder / WEIGHTS), spec)
    task = task or DATASET_TASKS.get(str(cfg.get("dataset", "tinystories")).lower())
    if task not in ("tinystories", "fineweb"):
        raise ConfigError(f"{source.folder / CONFIG_JSON}: dataset={cfg.get('dataset')!r} is not a corpus of the "
                          "suite; pass --task tinystories or --task fineweb")
    notes: list[str] = []
    tok_path, eos = find_tokenizer(source.folder, cfg, tokenizer, notes)
    tok = read_tokenizer(tok_path, eos, spec.vocab_size) if tok_path else None
    run_cfg = lm_run_config(spec, task, data_root, out / TOKENIZER_JSON if tok else None)
    model = build_model(run_cfg, state, source.folder / WEIGHTS)
    # everything is checked: write, metrics.json ("complete") last
    if tok:
        write_tokenizer(out, tok)
    checkpoint.save_config(out, run_cfg)
    checkpoint.save_weights(out / checkpoint.WEIGHTS, model)
    checkpoint.write_json(out / checkpoint.METRICS, {
        "complete": True, **provenance(source, cfg), "vocab_size": spec.vocab_size, "n_params": model.n_params(),
        "mapping": {"attention_scale": "1/sqrt(2 n_layer), as theirs" if spec.scale_attn
                    else "theirs unscaled (scale_attn=false): sqrt(2 n_layer) folded into attn.out",
                    "norm_eps": AUTHORS_NORM_EPS, "norm_gain": spec.norm_gain, "rope_base": spec.rope_base,
                    "mlp": spec.mlp},
        "tokenizer": tok.info if tok else None, "notes": notes,
    })
    return out


# --- SAEs -----------------------------------------------------------------------------------------------
@dataclass
class SAESpec:
    layer: int
    site: str
    d_model: int
    expansion: int
    k: int


def _point(value: Any, key: str, path: Path) -> tuple[str, int] | None:
    """Their Point(name, layer), saved as a [name, layer] list (or a {name, layer} object)."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = [value.get("name"), value.get("layer")]
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)):
        raise ConfigError(f"{path}: {key} must be [site name, layer], got {value!r}")
    return value[0].replace("-", "_"), value[1]  # their Sight reads "mlp-in" as "mlp_in"


def sae_spec(cfg: dict[str, Any], path: Path) -> SAESpec:
    known = {"point", "target", "d_model", "expansion", "k", "passthrough"} | set(SAE_TRAINING_KEYS)
    check_keys(cfg, path, known, SAE_FIXED_KEYS)
    point = _point(cfg.get("point"), "point", path)
    if point is None:
        raise ConfigError(f"{path}: missing config key 'point' (the SAE's site and layer)")
    target = _point(cfg.get("target"), "target", path)
    if target not in (None, point):
        raise ConfigError(f"{path}: target={list(target)} differs from point={list(point)}: a transcoder, not an SAE")
    if cfg.get("passthrough"):
        raise ConfigError(f"{path}: passthrough={cfg['passthrough']!r} (dimensions copied past the SAE) is not "
                          "supported")
    site, layer = point
    # their Sight: mlp_in = layer.n2.output, mlp_out = layer.mlp.output, which are ours (gains aside)
    if site not in SAE_SITES:
        raise ConfigError(f"{path}: site {site!r} is not an SAE site of the suite ({', '.join(SAE_SITES)})")
    for key in ("d_model", "expansion", "k"):
        if not isinstance(cfg.get(key), int) or isinstance(cfg.get(key), bool) or cfg[key] < 1:
            raise ConfigError(f"{path}: {key} must be a positive integer, got {cfg.get(key)!r}")
    return SAESpec(layer, site, cfg["d_model"], cfg["expansion"], cfg["k"])


def sae_state(t: Tensors) -> dict[str, tuple[str, Tensor]]:
    state = {"W_enc": t.take("w_enc.weight"), "W_dec": t.take("w_dec.weight"), "b_dec": t.take("b_dec")}
    t.check_all_taken()
    return state


def check_sae_fits_lm(spec: SAESpec, lm_dir: Path, lm, where: Path) -> None:
    d_lm = lm.embed.weight.shape[1]
    if spec.d_model != d_lm:
        raise CheckpointError(f"{where}: SAE d_model={spec.d_model} does not match the LM's d_model={d_lm} ({lm_dir})")
    if not 0 <= spec.layer < lm.n_layer:
        raise CheckpointError(f"{where}: SAE layer {spec.layer} is not a layer of {lm_dir} ({lm.n_layer} layers)")
    gain = lm.blocks[spec.layer].mlp_gain
    if spec.site == "mlp_in" and gain is not None and not bool((gain == 1).all()):
        # their mlp_in is the norm's output after its gain; ours is before it
        raise CheckpointError(f"{where}: the LM has an MLP norm gain at layer {spec.layer}; their mlp_in is after the "
                              "gain and ours before it, which is not supported")


def import_sae(src: str | Path, out_dir: str | Path, lm_run_dir: str | Path, data_root: str | None = None,
               revision: str | None = None, overwrite: bool = False) -> Path:
    """Write an SAE run directory (task=sae) from one of their SAEs, tied to the imported LM run ``lm_run_dir``.

    ``data_root`` (where the LM's token cache lives) defaults to the LM run's.
    ``src``: a folder with config.json + model.safetensors, or ``owner/name/<sae folder>`` on the hub (their
    ``*-scope`` repos hold one folder per SAE, named ``{layer}-{site}-x{expansion}-k{k}``, e.g. ``3-mlp-in-x4-k30``).
    """
    out = check_out(out_dir, overwrite)
    source = fetch(src, (CONFIG_JSON, WEIGHTS), revision)
    cfg = read_config_json(source.folder)
    spec = sae_spec(cfg, source.folder / CONFIG_JSON)
    state = sae_state(Tensors(read_tensors(source.folder), source.folder / WEIGHTS))
    lm_dir, lm_cfg, lm = open_lm_run(Path(lm_run_dir).resolve(), None, torch.device("cpu"))
    check_sae_fits_lm(spec, lm_dir, lm, source.folder)
    run_cfg = compose_train_config(["task=sae", "scale=paper", f"sae.layer={spec.layer}", f"sae.site={spec.site}",
                                    f"model.d_model={spec.d_model}", f"model.expansion={spec.expansion}",
                                    f"model.k={spec.k}"])
    OmegaConf.update(run_cfg, "lm", str(lm_dir))
    OmegaConf.update(run_cfg, "data_root", str(data_root if data_root is not None else lm_cfg.data.root))
    model = build_model(run_cfg, state, source.folder / WEIGHTS)
    checkpoint.save_config(out, run_cfg)
    checkpoint.save_weights(out / checkpoint.WEIGHTS, model)
    checkpoint.write_json(out / LM_REF, {"path": str(lm_dir),
                                            "weights_sha256": checkpoint.file_sha256(lm_dir / checkpoint.WEIGHTS)})
    checkpoint.write_json(out / checkpoint.METRICS, {
        "complete": True, **provenance(source, cfg), "layer": spec.layer, "site": spec.site, "lm": str(lm_dir),
        "n_latents": model.n_latents, "k": spec.k,
        "encode": "ours = ReLU(theirs): their top-k keeps negative pre-activations, ours zeroes them",
    })
    return out
