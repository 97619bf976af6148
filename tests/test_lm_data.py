"""LM data (issue 5): tokenizer round trip, the story generator, hub-format fixtures offline, cache errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from bilinear.dataio import stories
from bilinear.dataio.text_sources import build_source
from bilinear.dataio.tokenizer import EOT, normalize, train_tokenizer, word_id
from bilinear.dataio.tokens import load_or_build, open_cache
from bilinear.errors import DataError
from conftest import run_cli

TEXTS = ["Once upon a time, Lily was NOT   happy, so she cried.\nThe end!",
         "Tom felt never really scared; so he smiled. \"Let us play,\" said Ben (age 5).", "hello world"] * 20


def test_tokenizer_round_trip_up_to_normalisation():
    tok = train_tokenizer(TEXTS, vocab_size=200)
    assert tok.token_to_id(EOT) is not None
    for text in TEXTS[:3]:
        enc = tok.encode(text)
        assert tok.decode(enc.ids) == normalize(text)
    # split on whitespace and punctuation: no token spans a space or mixes letters with punctuation
    toks = tok.encode("lily was not happy, so she cried.").tokens
    assert toks == ["▁lily", "▁was", "▁not", "▁happy", ",", "▁so", "▁she", "▁cried", "."]


def test_generator_is_deterministic_and_planted_rule_holds():
    a = stories.generate_corpus(300, seed=3)
    b = stories.generate_corpus(300, seed=3)
    assert a == b and a["train"] and a["val"]
    assert stories.generate_corpus(300, seed=4) != a
    assert not set(a["train"]) & set(a["val"])
    cells = {c: 0 for c in stories.CELLS}
    pos_verbs = set(stories.POSITIVE_VERB)
    for i in range(300):
        text, rules = stories.generate_story(3, i)
        words = normalize(text).replace(",", " ,").replace(".", " .").split()
        sites = stories.rule_sites(words)
        assert len(sites) == len(rules) >= 1
        for (pos, cell, positive), rule in zip(sites, rules):
            assert cell == stories.cell_name(rule.adj_positive, rule.negated)
            assert positive == rule.verb_positive == (words[pos + 1] in pos_verbs)
            cells[cell] += 1
    assert min(cells.values()) > 30  # all four cells of the rule occur


def _write_hub_parquet(folder: Path, splits: dict[str, list[str]], extra_columns: bool = False) -> Path:
    """A local folder in the hub's layout: data/<split>-00000-of-00001.parquet with a 'text' column."""
    import datasets

    (folder / "data").mkdir(parents=True)
    for split, texts in splits.items():
        cols = {"text": texts}
        if extra_columns:  # FineWeb-Edu's schema has more columns than the text
            cols.update({"id": [f"<urn:{i}>" for i in range(len(texts))], "url": ["http://x"] * len(texts),
                         "score": [3.1] * len(texts)})
        datasets.Dataset.from_dict(cols).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def _corpus(n: int, seed: int = 0) -> list[str]:
    return [stories.generate_story(seed, i)[0].capitalize() for i in range(n)]


def test_tinystories_hub_layout_offline_removes_duplicates(tmp_path):
    train = _corpus(60)
    train = train + train[:15]  # 20% exact duplicates, as in TinyStories
    val = _corpus(10, seed=1)
    folder = _write_hub_parquet(tmp_path / "tinystories", {"train": train, "validation": val})
    cfg = OmegaConf.create({"source": "tinystories", "local_path": str(folder), "max_docs": None, "val_docs": 5})
    src = build_source(cfg)
    docs = list(src.docs("train"))
    assert len(docs) == 60 and len(set(docs)) == 60
    assert list(src.docs("val")) == val


def test_tinystories_txt_and_json_files(tmp_path):
    texts = _corpus(30)
    txt = tmp_path / "ts.txt"
    txt.write_text(f"\n{EOT}\n".join(texts + texts[:5]))
    src = build_source(OmegaConf.create({"source": "tinystories", "local_path": str(txt), "val_docs": 5}))
    assert len(list(src.docs("val"))) == 5 and len(list(src.docs("train"))) == 25
    js = tmp_path / "ts.jsonl"
    js.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    src = build_source(OmegaConf.create({"source": "tinystories", "local_path": str(js), "val_docs": 5}))
    assert len(list(src.docs("train"))) == 25


def test_hub_missing_offline_is_a_clear_error(tmp_path):
    cfg = OmegaConf.create({"source": "tinystories", "local_path": str(tmp_path / "absent")})
    with pytest.raises(DataError, match="cannot load roneneldan/TinyStories"):
        list(build_source(cfg).docs("val"))


def test_train_on_tinystories_and_fineweb_fixtures(tmp_path):
    _write_hub_parquet(tmp_path / "data" / "tinystories", {"train": _corpus(300), "validation": _corpus(20, 1)})
    _write_hub_parquet(tmp_path / "data" / "fineweb", {"train": _corpus(300, 2)}, extra_columns=True)
    for task in ("tinystories", "fineweb"):
        run = tmp_path / f"run_{task}"
        run_cli("train", f"task={task}", "scale=tiny", f"data_root={tmp_path / 'data'}", f"hydra.run.dir={run}",
                "train.progress=false")
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["complete"] and np.isfinite(metrics["val_loss"])
        assert (run / "tokenizer.json").is_file()


def _stories_source(n: int = 200):
    return build_source(OmegaConf.create({"source": "stories", "n_stories": n, "corpus_seed": 0, "val_fraction": 0.1,
                                          "p_negation": 0.5, "p_filler": 0.3, "max_feelings": 3,
                                          "max_events": 5}))


def test_token_cache_is_reused_and_checked(tmp_path):
    data = load_or_build(_stories_source(), tmp_path, vocab_size=300, log=lambda *_: None)
    assert word_id(data.tokenizer, "cried") is not None
    assert data.train.dtype == np.uint16 and len(data.train) > 1000
    mtime = (data.dir / "train.bin").stat().st_mtime_ns
    again = load_or_build(_stories_source(), tmp_path, vocab_size=300, log=lambda *_: None)
    assert again.dir == data.dir and (data.dir / "train.bin").stat().st_mtime_ns == mtime  # never recomputed
    assert np.array_equal(np.asarray(again.train), np.asarray(data.train))


def test_corrupt_token_cache_is_a_clear_error(tmp_path):
    data = load_or_build(_stories_source(), tmp_path, vocab_size=300, log=lambda *_: None)
    path = data.dir / "train.bin"
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="checksum"):
        open_cache(data.dir)
    path.write_bytes(bytes(raw[:-4]))
    with pytest.raises(DataError, match="wrong size"):
        load_or_build(_stories_source(), tmp_path, vocab_size=300, log=lambda *_: None)
    (data.dir / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="meta.json"):
        open_cache(data.dir)


def test_mismatched_tokenizer_is_a_clear_error(tmp_path):
    data = load_or_build(_stories_source(), tmp_path, vocab_size=300, log=lambda *_: None)
    train_tokenizer(TEXTS, vocab_size=100).save(str(data.dir / "tokenizer.json"))
    with pytest.raises(DataError, match="does not match the tokenizer"):
        load_or_build(_stories_source(), tmp_path, vocab_size=300, log=lambda *_: None)
