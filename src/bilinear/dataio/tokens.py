"""The tokenized-corpus cache: every LM corpus goes through it (issue 5 "Data").

    <data_root>/tokens/<source>-<key>/
        tokenizer.json       the BPE trained on this corpus (or the one given by data.tokenizer)
        train.bin, val.bin   uint16 (uint32 for vocabularies > 65535) token ids, documents separated by EOT
        meta.json            written last: settings, tokenizer hash, token counts and file hashes

``key`` hashes the source's settings, the vocabulary size and the tokenizer, so a change of any of them
builds a new cache and a valid cache is never recomputed. Files are opened as ``np.memmap``; a cache that
fails its checks raises a DataError saying which file and how to fix it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tokenizers import Tokenizer

from bilinear import checkpoint
from bilinear.dataio.text_sources import SPLITS
from bilinear.checkpoint import file_sha256
from bilinear.dataio.tokenizer import EOT, TOKENIZER_FILE, load_tokenizer, tokenizer_sha256, train_tokenizer
from bilinear.errors import DataError

FORMAT = 1
VERIFY_HASH_MAX_BYTES = 1 << 30  # full-file hashes above this size would cost more than they catch


@dataclass
class TokenData:
    """A validated cache: the tokenizer and one memory-mapped 1-D token array per split."""

    dir: Path
    tokenizer: Tokenizer
    splits: dict[str, np.ndarray]
    meta: dict[str, Any]

    @property
    def train(self) -> np.ndarray:
        return self.splits["train"]

    @property
    def val(self) -> np.ndarray:
        return self.splits["val"]

    @property
    def tokenizer_sha256(self) -> str:
        return self.meta["tokenizer_sha256"]


def cache_key(settings: dict[str, Any], vocab_size: int, tokenizer_sha: str | None, max_tokens: int | None) -> str:
    blob = json.dumps({"format": FORMAT, "settings": settings, "vocab_size": vocab_size, "tokenizer": tokenizer_sha,
                       "max_tokens": max_tokens}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def open_cache(cache_dir: Path, verify: bool = True) -> TokenData:
    """Open and validate a finished cache. Raises DataError when it is corrupt or its tokenizer does not match."""
    cache_dir = Path(cache_dir)
    fix = f"delete {cache_dir} to rebuild it"
    try:
        meta = json.loads((cache_dir / "meta.json").read_text())
        dtype = np.dtype(meta["dtype"])
        splits_meta = meta["splits"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"token cache {cache_dir}: unreadable meta.json ({e.__class__.__name__}); {fix}") from None
    tokenizer = load_tokenizer(cache_dir / TOKENIZER_FILE)
    if tokenizer_sha256(tokenizer) != meta.get("tokenizer_sha256"):
        raise DataError(f"token cache {cache_dir}: tokenizer.json does not match the tokenizer the tokens were made "
                        f"with; {fix}")
    splits = {}
    for split in SPLITS:
        path, info = cache_dir / f"{split}.bin", splits_meta.get(split, {})
        n = info.get("n_tokens")
        if not path.is_file() or n is None or path.stat().st_size != n * dtype.itemsize:
            raise DataError(f"token cache {cache_dir}: {path.name} is missing or has the wrong size (truncated?); {fix}")
        if verify and path.stat().st_size <= VERIFY_HASH_MAX_BYTES and file_sha256(path) != info.get("sha256"):
            raise DataError(f"token cache {cache_dir}: {path.name} fails its checksum (corrupt); {fix}")
        splits[split] = np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
    if splits["train"].size == 0 or splits["val"].size == 0:
        raise DataError(f"token cache {cache_dir}: a split is empty; give the corpus more documents")
    vocab = tokenizer.get_vocab_size()
    if int(max(splits["train"][: 1 << 20].max(), splits["val"][: 1 << 20].max())) >= vocab:
        raise DataError(f"token cache {cache_dir}: token ids exceed the tokenizer's vocabulary ({vocab}); {fix}")
    return TokenData(cache_dir, tokenizer, splits, meta)


def _encode_to_file(tokenizer: Tokenizer, docs: Iterator[str], path: Path, dtype: np.dtype,
                    max_tokens: int | None, chunk: int = 2048) -> int:
    """Encode documents in batches, EOT after each, appended to ``path``; stops after ``max_tokens``."""
    eot = tokenizer.token_to_id(EOT)
    n = 0
    with checkpoint.atomic_path(path) as tmp, open(tmp, "wb") as f:
        batch: list[str] = []

        def flush() -> bool:
            nonlocal n
            ids = []
            for enc in tokenizer.encode_batch(batch):
                ids.extend(enc.ids)
                ids.append(eot)
            arr = np.asarray(ids, dtype=dtype)
            if max_tokens is not None and n + arr.size > max_tokens:
                arr = arr[: max_tokens - n]
            f.write(arr.tobytes())
            n += arr.size
            batch.clear()
            return max_tokens is not None and n >= max_tokens

        for doc in docs:
            batch.append(doc)
            if len(batch) >= chunk and flush():
                break
        else:
            if batch:
                flush()
        f.flush()
    return n


def _take_chars(docs: Iterator[str], max_chars: int) -> Iterator[str]:
    total = 0
    for doc in docs:
        yield doc
        total += len(doc)
        if total >= max_chars:
            return


def load_or_build(source, root: str | Path, vocab_size: int, tokenizer_path: str | None = None,
                  max_tokens: int | None = None, tokenizer_chars: int = 50_000_000, verify: bool = True,
                  log=print, may_build: bool = True) -> TokenData:
    """The cache for ``source`` under ``root``, built once (tokenizer trained on the train split) and reused.

    Args:
        source: a text source (``bilinear.dataio.text_sources``).
        vocab_size: BPE vocabulary size when training a tokenizer.
        tokenizer_path: an existing tokenizer.json (or run directory) to use instead of training one.
        max_tokens: cap on the train split's tokens (needed for streamed corpora).
        tokenizer_chars: characters of training text the BPE is trained on.
        may_build: False when ``root`` came from a run directory rather than from the user: a missing cache
            is then an error instead of a folder built (or an interrupted one deleted) wherever that run says.
    """
    given = load_tokenizer(tokenizer_path) if tokenizer_path else None
    key = cache_key(source.settings, vocab_size, tokenizer_sha256(given) if given else None, max_tokens)
    cache_dir = Path(root) / "tokens" / f"{source.name}-{key}"
    if (cache_dir / "meta.json").exists():
        data = open_cache(cache_dir, verify=verify)
        if given is not None and data.tokenizer_sha256 != tokenizer_sha256(given):
            raise DataError(f"token cache {cache_dir} was made with a different tokenizer than {tokenizer_path}; "
                            f"delete {cache_dir} to rebuild it")
        return data
    if not may_build:
        raise DataError(f"token cache {cache_dir} does not exist; pass data_root=<folder> to build it there "
                        f"(nothing is built where only a run's config.yaml says)")
    if cache_dir.exists():  # an interrupted build: no meta.json means nothing in it was ever trusted
        shutil.rmtree(cache_dir)
    cache_dir.mkdir(parents=True)
    log(f"building token cache {cache_dir}")
    tokenizer = given or train_tokenizer(_take_chars(source.docs("train"), tokenizer_chars), vocab_size)
    tokenizer.save(str(cache_dir / TOKENIZER_FILE))
    dtype = dtype_for(tokenizer.get_vocab_size())
    splits = {}
    for split in SPLITS:
        path = cache_dir / f"{split}.bin"
        n = _encode_to_file(tokenizer, source.docs(split), path, dtype, max_tokens if split == "train" else None)
        splits[split] = {"n_tokens": n, "sha256": file_sha256(path)}
    meta = {"format": FORMAT, "settings": source.settings, "vocab_size": vocab_size, "dtype": dtype.name,
            "tokenizer_sha256": tokenizer_sha256(tokenizer), "splits": splits, "max_tokens": max_tokens}
    checkpoint.write_json(cache_dir / "meta.json", meta)  # last: its presence marks a finished cache
    return open_cache(cache_dir, verify=False)
