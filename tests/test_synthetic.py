"""The synthetic grammar: deterministic, distinct sentences, and attributes that shape the text."""

from __future__ import annotations

import json
import re

import pytest

from della.cli import main
from della.data import synthetic
from della.data.corpus import read_attributes, read_lines

SIZES = {"train": 600, "valid": 100, "test": 100}


@pytest.fixture(scope="module")
def corpus():
    return synthetic.generate_corpus(SIZES, seed=0)


def _texts(corpus):
    return {split: [ex.text for ex in examples] for split, examples in corpus.items()}


def test_same_seed_same_corpus_and_different_seed_differs(corpus):
    assert _texts(synthetic.generate_corpus(SIZES, seed=0)) == _texts(corpus)
    other = _texts(synthetic.generate_corpus(SIZES, seed=1))
    assert other["train"] != _texts(corpus)["train"]
    assert len(set(other["train"]) & set(_texts(corpus)["train"])) < 60  # mostly new sentences


def test_sizes_and_distinct_across_splits(corpus):
    texts = _texts(corpus)
    assert {s: len(t) for s, t in texts.items()} == SIZES
    everything = [t for split in texts.values() for t in split]
    assert len(set(everything)) == len(everything)


def test_grammar_yields_thousands_of_distinct_sentences():
    big = synthetic.generate_corpus({"train": 5000}, seed=3)
    assert len({ex.text for ex in big["train"]}) == 5000


def test_every_attribute_value_occurs(corpus):
    for name, values in synthetic.ATTRIBUTES.items():
        seen = {ex.attributes[name] for ex in corpus["train"]}
        assert seen == set(values), name


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _has_phrase(text: str, phrase: str) -> bool:
    return re.search(rf"\b{re.escape(phrase)}\b", text.lower()) is not None


def test_attributes_shape_the_text(corpus):
    for ex in corpus["train"]:
        a, text = ex.attributes, ex.text
        lo, hi = synthetic.WORD_RANGE[a["length"]]
        assert lo <= len(text.split()) <= hi, ex
        assert ("will" in _words(text)) == (a["tense"] == "future"), ex
        assert any(_has_phrase(text, obj) for obj in synthetic.OBJECTS[a["topic"]]), ex
        adjectives = synthetic.ADJECTIVES[a["topic"], a["sentiment"]] + synthetic.GENERAL_ADJECTIVES[a["sentiment"]]
        assert any(adj in _words(text) for adj in adjectives), ex
        assert text[0].isupper() and text.endswith("."), ex


def test_attributes_are_predictable_from_words(corpus):
    """A bag-of-words nearest-centroid classifier recovers each attribute on held-out text."""
    def features(text):
        return set(_words(text)) | {f"len{len(text.split()) > 10}"}

    for name in synthetic.ATTRIBUTES:
        counts: dict[str, dict[str, int]] = {}
        for ex in corpus["train"]:
            per = counts.setdefault(ex.attributes[name], {})
            for f in features(ex.text):
                per[f] = per.get(f, 0) + 1
        totals = {v: sum(1 for ex in corpus["train"] if ex.attributes[name] == v) for v in counts}

        def predict(text):
            fs = features(text)
            return max(counts, key=lambda v: sum(counts[v].get(f, 0) / totals[v] for f in fs))

        correct = sum(predict(ex.text) == ex.attributes[name] for ex in corpus["test"])
        chance = 1 / len(synthetic.ATTRIBUTES[name])
        assert correct / len(corpus["test"]) > max(0.8, chance + 0.3), name


def test_prepare_data_synthetic_writes_aligned_attributes(tmp_path):
    out = tmp_path / "syn"
    main(["prepare-data", "--source", "synthetic", "--seed", "5", "--n-train", "50", "--n-valid", "10",
          "--n-test", "12", "--out", str(out)])
    report = json.loads((out / "prepare.json").read_text())
    assert report["source"] == "synthetic" and report["seed"] == 5
    for split, n in (("train", 50), ("valid", 10), ("test", 12)):
        lines = read_lines(out / f"{split}.txt")
        attrs = read_attributes(out / f"{split}.attributes.jsonl", n_lines=len(lines))
        assert len(lines) == n and report["splits"][split]["lines_written"] == n
        assert set(attrs[0]) == set(synthetic.ATTRIBUTES)
    expected = synthetic.generate_corpus({"train": 50, "valid": 10, "test": 12}, seed=5)
    assert read_lines(out / "test.txt") == [ex.text for ex in expected["test"]]
    assert read_attributes(out / "test.attributes.jsonl") == [ex.attributes for ex in expected["test"]]


def test_prepare_data_synthetic_is_byte_identical_for_a_seed(tmp_path):
    args = ["prepare-data", "--source", "synthetic", "--n-train", "30", "--n-valid", "5", "--n-test", "5"]
    main(args + ["--seed", "1", "--out", str(tmp_path / "a")])
    main(args + ["--seed", "1", "--out", str(tmp_path / "b")])
    main(args + ["--seed", "2", "--out", str(tmp_path / "c")])
    for name in ("train.txt", "train.attributes.jsonl", "prepare.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "train.txt").read_bytes() != (tmp_path / "c" / "train.txt").read_bytes()


def test_caps_apply_to_text_and_attributes(tmp_path):
    out = tmp_path / "capped"
    main(["prepare-data", "--source", "synthetic", "--n-train", "40", "--n-valid", "10", "--n-test", "10",
          "--max-train-lines", "25", "--max-eval-lines", "4", "--out", str(out)])
    assert len(read_lines(out / "train.txt")) == 25
    assert len(read_attributes(out / "train.attributes.jsonl")) == 25
    assert len(read_lines(out / "valid.txt")) == 4
    report = json.loads((out / "prepare.json").read_text())
    assert report["splits"]["train"]["capped_from"] == 40
    assert report["caps"] == {"max_train_lines": 25, "max_eval_lines": 4}
