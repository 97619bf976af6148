"""Text corpora for the language models: the synthetic stories, TinyStories, FineWeb-Edu (PAPER.md §3), and
natural English from a folder of .txt files (issue 13: the offline corpus of ``make data``, or the user's own).

A source yields documents per split (``docs(split)``) and describes itself (``settings``) so that the token
cache (``bilinear.dataio.tokens``) can be keyed by it. Local files come first; otherwise the HF hub when
online; otherwise a DataError saying how to get the data (DESIGN.md principle 6).

Hub schemas (what the offline test fixtures imitate):
    roneneldan/TinyStories          splits train / validation, column ``text``
    HuggingFaceFW/fineweb-edu       config ``sample-10BT``, split train only, column ``text`` (+ id, url, ...)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig

from bilinear.dataio import text_corpus
from bilinear.dataio.stories import generate_corpus
from bilinear.dataio.tokenizer import EOT
from bilinear.errors import ConfigError, DataError

SPLITS = ("train", "val")


class StoriesSource:
    """The synthetic stories with the planted negation rule; generated in memory, no files."""

    name = "stories"

    def __init__(self, cfg: DictConfig):
        self.kw = dict(n_stories=int(cfg.n_stories), seed=int(cfg.corpus_seed), val_fraction=float(cfg.val_fraction),
                       p_negation=float(cfg.p_negation), p_filler=float(cfg.p_filler), max_feelings=int(cfg.max_feelings),
                       max_events=int(cfg.max_events))
        self._corpus: dict[str, list[str]] | None = None

    @property
    def settings(self) -> dict[str, Any]:
        return {"source": self.name, "generator": 1, **self.kw}

    def docs(self, split: str) -> Iterator[str]:
        if self._corpus is None:
            self._corpus = generate_corpus(**self.kw)
        return iter(self._corpus[split])


def _dedup(docs: Iterator[str], seen: set[bytes]) -> Iterator[str]:
    """Drop exact duplicates (after stripping whitespace) and empty documents; ``seen`` holds 16-byte digests."""
    for text in docs:
        text = text.strip()
        if not text:
            continue
        h = hashlib.blake2b(text.encode(), digest_size=16).digest()
        if h in seen:
            continue
        seen.add(h)
        yield text


def _read_txt(path: Path) -> list[str]:
    """TinyStories' raw text format: stories separated by <|endoftext|> lines."""
    return [s for s in path.read_text(encoding="utf-8").split(EOT)]


class HubSource:
    """A text dataset from local files (txt / json / jsonl / parquet, or a folder in the hub's layout) or the hub."""

    name = "hub"
    hub_id = ""
    hub_config: str | None = None
    streaming = False
    val_split: str | None = "validation"

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.local = Path(cfg.local_path) if cfg.get("local_path") else None
        self.max_docs = cfg.get("max_docs")

    @property
    def settings(self) -> dict[str, Any]:
        where = str(self.local.resolve()) if self.local and self.local.exists() else f"hub:{self.hub_id}/{self.hub_config}"
        return {"source": self.name, "where": where, "max_docs": self.max_docs, "val_docs": self.cfg.get("val_docs"),
                "dedup": 1}

    def _load(self, split: str):
        """A ``datasets`` split (streamed for big corpora). Column ``text``."""
        import datasets

        kw: dict[str, Any] = {"split": split, "streaming": self.streaming}
        if self.local is not None and self.local.exists():
            if self.local.is_dir():
                return datasets.load_dataset(str(self.local), **kw)
            suffix = self.local.suffix.lstrip(".")
            builder = {"jsonl": "json", "json": "json", "parquet": "parquet", "txt": "text"}.get(suffix)
            if builder is None:
                raise DataError(f"{self.local}: unsupported file type (use .txt, .json, .jsonl, .parquet or a folder)")
            return datasets.load_dataset(builder, data_files={"train": str(self.local)}, **kw)
        try:
            return datasets.load_dataset(self.hub_id, self.hub_config, **kw)
        except Exception as e:  # noqa: BLE001 - offline, missing or network: one clear message
            hint = f"put the files under {self.local}" if self.local else "set data.local_path"
            raise DataError(
                f"cannot load {self.hub_id} from the HF hub ({e.__class__.__name__}); go online, or {hint} "
                f"(txt/json/jsonl/parquet, column 'text')"
            ) from None

    def _raw(self, split: str) -> Iterator[str]:
        local_txt = self.local is not None and self.local.is_file() and self.local.suffix == ".txt"
        if local_txt:
            docs = _read_txt(self.local)
            yield from self._split_single(docs, split)
            return
        has_val = self._has_split(self.val_split)
        if has_val:
            ds = self._load("train" if split == "train" else self.val_split)
            yield from self._texts(ds)
        else:
            yield from self._split_single(self._texts(self._load("train")), split)

    def _has_split(self, name: str | None) -> bool:
        if name is None:
            return False
        try:
            self._load(name)
            return True
        except (ValueError, KeyError):
            return False

    def _texts(self, ds) -> Iterator[str]:
        for row in ds:
            text = row.get("text", row.get("story"))
            if text is None:
                raise DataError(f"{self.name}: records have no 'text' column (columns: {sorted(row)})")
            yield text

    def _split_single(self, docs, split: str) -> Iterator[str]:
        """No validation split on disk: the first ``val_docs`` documents are held out."""
        n_val = int(self.cfg.get("val_docs") or 1000)
        for i, text in enumerate(docs):
            if (i < n_val) == (split == "val"):
                yield text
            elif split == "val":
                return

    def docs(self, split: str) -> Iterator[str]:
        if split == "train":
            # Exact duplicates are removed, also against the validation split (PAPER.md §3: ~20% duplicates).
            seen: set[bytes] = set()
            for _ in _dedup(self._raw("val"), seen):
                pass
        else:
            seen = set()
        n = 0
        for text in _dedup(self._raw(split), seen):
            if split == "train" and self.max_docs and n >= self.max_docs:
                return
            n += 1
            yield text


class TinyStoriesSource(HubSource):
    name = "tinystories"
    hub_id = "roneneldan/TinyStories"


class FineWebSource(HubSource):
    """FineWeb-Edu, streamed: it is far too large to download for the token budget we train on."""

    name = "fineweb"
    hub_id = "HuggingFaceFW/fineweb-edu"
    streaming = True
    val_split = None

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.hub_config = cfg.get("hub_config") or "sample-10BT"


class TextFolderSource:
    """Natural text from a folder of UTF-8 .txt files, one document per file (issue 13).

    ``data.local_path`` defaults to the corpus ``make data`` assembles (``<data_root>/text/corpus``, one subfolder
    per source); any folder of .txt files works the same way. Held-out documents are whole files chosen by
    ``text_corpus.split_documents`` at ``data.val_fraction``. The token cache is keyed by a digest of every
    file's name and bytes, so an edited corpus gets a new cache.
    """

    name = "text"

    def __init__(self, cfg: DictConfig):
        if not cfg.get("local_path"):
            raise ConfigError("config: data.local_path must name a folder of .txt files")
        self.folder = Path(str(cfg.local_path))
        vf = cfg.get("val_fraction")
        if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 < vf < 1:
            raise ConfigError(f"config: data.val_fraction must be a number in (0, 1), got {vf!r}")
        self.val_fraction = float(vf)
        if not self.folder.is_dir():
            raise DataError(f"no text corpus at {self.folder}: run `make data` (or `python scripts/fetch_data.py "
                            f"--only text`), or set data.local_path to a folder of .txt files (one document per file)")
        self._split: dict[str, list[text_corpus.Document]] | None = None
        self._digest: str | None = None

    @property
    def settings(self) -> dict[str, Any]:
        if self._digest is None:
            self._digest = text_corpus.folder_digest(self.folder)
        return {"source": self.name, "content_sha256": self._digest, "val_fraction": self.val_fraction,
                "split_rule": text_corpus.SPLIT_RULE}

    def split(self) -> dict[str, list[text_corpus.Document]]:
        """``{"train": [...], "val": [...]}``, read once."""
        if self._split is None:
            self._split = text_corpus.split_documents(text_corpus.read_txt_folder(self.folder), self.val_fraction)
        return self._split

    def docs(self, split: str) -> Iterator[str]:
        return iter([d.text for d in self.split()[split]])


SOURCES = {"stories": StoriesSource, "tinystories": TinyStoriesSource, "fineweb": FineWebSource,
           "text": TextFolderSource}


def build_source(cfg: DictConfig):
    """The source named by ``cfg.source`` (cfg is the ``data`` section)."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"config: data.source must be one of {', '.join(SOURCES)}, got {cfg.source!r}")
    return SOURCES[cfg.source](cfg)
