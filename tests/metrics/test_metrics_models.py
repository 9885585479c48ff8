"""ROUGE against rouge-score; MAUVE and BERTScore known values on the offline MiniLM."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

import metrics


@pytest.mark.parametrize("stemmer,rouge_l", [(False, "rougeL"), (True, "rougeLsum")])
def test_rouge_equals_rouge_score(shared_lines, stemmer, rouge_l):
    from rouge_score.rouge_scorer import RougeScorer

    pairs = shared_lines("cnndm", "test", 20) + shared_lines("quora", "test", 100)
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    doc = metrics.compute(["rouge"], sources, references=targets, rouge_stemmer=stemmer,
                          rouge_l=rouge_l, task="conditional")["metrics"]
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=stemmer)
    scores = [scorer.score(t, s) for s, t in zip(sources, targets)]
    # rougeLsum: every sentence on a line of its own (the texts are one line each)
    split = [scorer.score(*(re.sub(r"([.!?])\s+", "\\1\n", x) for x in (t, s))) for s, t in zip(sources, targets)]
    for key, rouge_type in (("rouge1", "rouge1"), ("rouge2", "rouge2"), ("rougeL", rouge_l)):
        expected = np.mean([s[rouge_type].fmeasure for s in (split if rouge_l == "rougeLsum" else scores)])
        assert doc[key]["value"] == pytest.approx(expected, abs=1e-12)
        assert f"type:{rouge_type}" in doc[key]["signature"]
    if rouge_l == "rougeLsum":  # not vacuous: on CNN/DM's multi-sentence pairs the split changes the score
        cnndm = [(a["rougeLsum"].fmeasure, b["rougeL"].fmeasure) for a, b in zip(split[:20], scores[:20])]
        assert np.mean([a - b for a, b in cnndm]) > 0.02


def test_rouge_lsum_splits_a_target_with_line_breaks_only_at_sentence_ends():
    """A WritingPrompts target keeps its paragraphs' line breaks; a sample is one line: the same text
    must score the same either way."""
    sample = "and slept the cat sat on the mat. then it woke up"
    one_line, broken = "the cat sat on the mat and slept. then it woke up", "the cat sat on the mat\nand slept.\n\nthen it woke up"
    one, other = (metrics.compute(["rouge"], [sample], references=[target], rouge_l="rougeLsum",
                                  task="conditional")["metrics"]["rougeL"]["value"] for target in (one_line, broken))
    assert one == other < 1  # a break after "mat" would let "and slept" match out of order


@pytest.fixture(scope="module")
def snli_300():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "snli" / "test.txt"
    if not path.is_file():
        pytest.skip(f"shared data not available at {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").split("\n")[:300]]


def test_mauve_of_a_set_against_itself_is_one_and_word_shuffling_lowers_it(snli_300):
    rng = random.Random(0)
    shuffled = [" ".join(rng.sample(t.split(), len(t.split()))) for t in snli_300]
    same = metrics.compute(["mauve"], snli_300, references=snli_300)["metrics"]["mauve"]
    worse = metrics.compute(["mauve"], shuffled, references=snli_300)["metrics"]["mauve"]
    assert same["value"] == pytest.approx(1.0, abs=1e-6)
    assert worse["value"] < 0.8
    assert "encoder:minilm" in same["signature"] and "seed:25" in same["signature"]
    assert same["details"]["num_buckets"] == 30  # mauve-text's auto rule: 300 / 10


def test_bertscore_of_identical_strings_is_one_and_empty_pairs_score_zero():
    texts = ["a man is playing a guitar on stage .", "two dogs run through the snow", "hello"]
    doc = metrics.compute(["bertscore"], texts + [""], references=texts + ["not empty"],
                          task="conditional")
    entry = doc["metrics"]["bertscore"]
    assert entry["value"] == pytest.approx(3 / 4, abs=1e-5)  # three identical pairs, one empty
    assert entry["details"]["n_empty_pairs"] == 1 and entry["details"]["empty_pair_f1"] == 0
    assert "model:minilm" in entry["signature"] and "layer:6" in entry["signature"]
    assert entry["label"] == "BERTScore" and entry["display_scale"] == 100


def test_an_empty_pair_is_rescaled_with_the_baseline_as_bert_score_rescales_its_zero(monkeypatch):
    """bert-score gives an empty string 0 before rescaling: (0 - b) / (1 - b) after it, here with a
    stand-in scorer whose one real pair scores 0.9 and whose baseline is b = 0.5."""
    import torch

    import metrics.bertscore

    class Rescaling:
        baseline_vals, model_type, hash = torch.tensor([0.5, 0.5, 0.5]), "stand-in", "stand-in"

        def score(self, cands, refs, batch_size):
            return (torch.full((len(cands),), 0.9),) * 3

    monkeypatch.setattr(metrics.bertscore, "build_scorer", lambda opts, idf_sents: (Rescaling(), 1))
    entry = metrics.compute(["bertscore"], ["a b", ""], references=["a b", "c"], task="conditional",
                            bertscore_rescale=True)["metrics"]["bertscore"]
    assert entry["details"]["empty_pair_f1"] == -1.0
    assert entry["value"] == pytest.approx((0.9 - 1.0) / 2)


@pytest.mark.parametrize("idf", [False, True])
def test_chunked_bertscore_equals_bert_score_in_one_call(shared_lines, idf):
    import bert_score

    import metrics.bertscore
    from metrics.encoders import resolve_encoder

    pairs = shared_lines("quora", "test", 30)
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    assert metrics.bertscore.pairs_per_call(14) == 7  # 30 pairs in 5 calls
    entry = metrics.compute(["bertscore"], sources, references=targets, task="conditional",
                            bertscore_idf=idf, batch_size=14)["metrics"]["bertscore"]
    p, r, f = bert_score.score(sources, targets, model_type=resolve_encoder("minilm"),
                               num_layers=6, idf=idf)
    assert entry["value"] == pytest.approx(float(f.double().mean()), abs=1e-6)
    assert entry["details"]["recall"] == pytest.approx(float(r.double().mean()), abs=1e-6)
    assert entry["details"]["precision"] == pytest.approx(float(p.double().mean()), abs=1e-6)


def test_the_idf_comes_from_every_target_even_one_whose_sample_is_empty(shared_lines):
    import bert_score

    from metrics.encoders import resolve_encoder

    pairs = shared_lines("quora", "test", 12)
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    sources[3] = ""  # its pair scores 0; its target still counts in the IDF
    entry = metrics.compute(["bertscore"], sources, references=targets, task="conditional",
                            bertscore_idf=True)["metrics"]["bertscore"]
    scorer = bert_score.BERTScorer(model_type=resolve_encoder("minilm"), num_layers=6, idf=True, idf_sents=targets)
    kept = [i for i in range(12) if i != 3]
    _, _, f = scorer.score([sources[i] for i in kept], [targets[i] for i in kept])
    assert entry["value"] == pytest.approx(float(f.double().sum()) / 12, abs=1e-6)


def test_a_missing_encoder_fails_unless_optional_then_it_is_recorded(tmp_path):
    from metrics.compute import MetricFailed

    missing = str(tmp_path / "no-such-model")
    args = dict(references=["a b c", "d e g"], task="conditional", mauve_encoder=missing,
                bertscore_model=missing, bertscore_num_layers=2)
    with pytest.raises(MetricFailed, match="bertscore: .*mark it optional"):
        metrics.compute(["bertscore", "rouge"], ["a b c", "d e f"], **args)
    doc = metrics.compute(["bertscore", "mauve", "rouge"], ["a b c", "d e f"],
                          optional=["bertscore", "mauve"], **args)["metrics"]
    for key in ("bertscore", "mauve"):
        assert doc[key]["value"] is None and "no-such-model" in doc[key]["error"]
    assert doc["rouge1"]["value"] == pytest.approx((1 + 2 / 3) / 2)
