"""The BPE tokenizer of PAPER.md §3 "Models": lowercase, split on whitespace and punctuation, 4096 tokens by default.

Built with HF ``tokenizers`` (tiktoken cannot fetch its files here, ENVIRONMENT.md). Whitespace is collapsed
to single spaces and marked with "▁" (Metaspace), so ``decode(encode(t)) == normalize(t)``: a round trip up
to lowercasing and whitespace runs. The end-of-text token separates documents in the token stream.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from bilinear.errors import DataError

EOT = "<|endoftext|>"
UNK = "<|unk|>"
TOKENIZER_FILE = "tokenizer.json"


def normalize(text: str) -> str:
    """What the tokenizer sees: lowercase, whitespace runs collapsed to one space, ends stripped."""
    return re.sub(r"\s+", " ", text).strip().lower()


def new_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    """Train a BPE of at most ``vocab_size`` tokens (EOT and UNK included) on an iterator of documents."""
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT, UNK], show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def tokenizer_sha256(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"{path}: no tokenizer file")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on bad json
        raise DataError(f"{path}: unreadable tokenizer ({str(e).splitlines()[0][:80]})") from None
    if tok.token_to_id(EOT) is None:
        raise DataError(f"{path}: tokenizer has no end-of-text token {EOT}")
    return tok


def word_id(tok: Tokenizer, word: str) -> int | None:
    """The id of ``word`` as one token at the start of a word (``▁word``), or None if it takes several."""
    return tok.token_to_id("▁" + word)
