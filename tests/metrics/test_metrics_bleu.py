"""Fast BLEU / Self-BLEU against NLTK's sentence_bleu, and sacrebleu for conditional BLEU."""

from __future__ import annotations

import random

import numpy as np
import pytest

import metrics
from metrics.bleu import closest_ref_lengths, fast_self_bleu, fast_sentence_bleu

bleu_score = pytest.importorskip("nltk.translate.bleu_score")
METHOD1 = bleu_score.SmoothingFunction().method1


def nltk_bleu(refs, hyps, order):
    return [bleu_score.sentence_bleu(refs, h, (1 / order,) * order, METHOD1) for h in hyps]


def nltk_self_bleu(samples, order):
    return [bleu_score.sentence_bleu(samples[:i] + samples[i + 1:], s, (1 / order,) * order, METHOD1)
            for i, s in enumerate(samples)]


def random_corpus(rng: random.Random, n: int, vocab: int = 6) -> list[list[str]]:
    """Short sentences over a tiny vocabulary: many matches, empties, lengths below n, repeats."""
    words = [f"w{i}" for i in range(vocab)]
    corpus = [[rng.choice(words) for _ in range(rng.choice([0, 1, 2, 3, 4, 6, 9]))] for _ in range(n)]
    return corpus + [list(s) for s in corpus[: n // 4]]  # exact duplicates


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("seed", range(6))
def test_multi_reference_bleu_equals_nltk_on_random_input(order, seed):
    rng = random.Random(seed)
    hyps, refs = random_corpus(rng, 16), random_corpus(rng, rng.randint(1, 12)) + [["w0", "w1"]]
    np.testing.assert_allclose(fast_sentence_bleu(hyps, refs, order), nltk_bleu(refs, hyps, order),
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("seed", range(6))
def test_self_bleu_equals_nltk_on_random_input(order, seed):
    samples = random_corpus(random.Random(100 + seed), 20)
    np.testing.assert_allclose(fast_self_bleu(samples, order), nltk_self_bleu(samples, order),
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("dataset,n_hyps,n_refs", [("ptb", 25, 1000), ("yahoo", 6, 300)])
def test_multi_reference_bleu_equals_nltk_on_real_text(shared_lines, dataset, n_hyps, n_refs):
    hyps = [t.split() for t in shared_lines(dataset, "valid", n_hyps)]
    refs = [t.split() for t in shared_lines(dataset, "test", n_refs)]
    for order in (3, 4):
        np.testing.assert_allclose(fast_sentence_bleu(hyps, refs, order),
                                   nltk_bleu(refs, hyps, order), rtol=0, atol=1e-9)


@pytest.mark.parametrize("dataset", ["ptb", "snli"])
def test_self_bleu_equals_nltk_on_real_text(shared_lines, dataset):
    samples = [t.split() for t in shared_lines(dataset, "test", 120)]
    samples += samples[:5]  # duplicates are references of each other
    np.testing.assert_allclose(fast_self_bleu(samples, 4), nltk_self_bleu(samples, 4),
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("hyp_len,ref_lens,leave_one_out,expected", [
    (10, [8, 12], False, 8),  # tie: the shorter wins
    (10, [9, 12], False, 9),
    (10, [7, 12], False, 12),
    (10, [10, 3], False, 10),
    (10, [10, 9, 11], True, 9),  # own length left out, tie 9/11 -> 9
    (10, [10, 10, 30], True, 10),  # a second sample of the same length stays
    (0, [0, 5], True, 5),
])
def test_closest_reference_length_follows_nltk(hyp_len, ref_lens, leave_one_out, expected):
    assert closest_ref_lengths([hyp_len], ref_lens, leave_one_out) == [expected]
    if not leave_one_out:
        refs = [["x"] * n for n in ref_lens]
        assert bleu_score.closest_ref_length(refs, hyp_len) == expected


def test_identical_samples_give_self_bleu_one_and_disjoint_vocabularies_give_bleu_zero():
    same = ["the cat sat on the mat today"] * 5
    doc = metrics.compute(["self_bleu", "bleu"], same, references=["a b c d e f g", "h i j"])
    assert doc["metrics"]["self_bleu"]["value"] == pytest.approx(1.0, abs=1e-12)
    assert doc["metrics"]["bleu"]["value"] == 0.0
    assert doc["metrics"]["bleu"]["details"]["n_zero"] == 5


def test_texygen_order_is_reported_next_to_the_primary_order():
    doc = metrics.compute(["bleu"], ["a b c d", "a b x y"], references=["a b c d e", "b c"])
    entry = doc["metrics"]["bleu"]
    assert "order:4" in entry["signature"]
    hyps, refs = [["a", "b", "c", "d"], ["a", "b", "x", "y"]], [["a", "b", "c", "d", "e"], ["b", "c"]]
    assert entry["details"]["by_order"]["3"] == pytest.approx(np.mean(nltk_bleu(refs, hyps, 3)),
                                                              abs=1e-12)


def test_self_bleu_subsample_is_seeded_and_recorded():
    texts = [f"s{i} common words here {i % 7}" for i in range(60)]
    one = metrics.compute(["self_bleu"], texts, self_bleu_max_samples=20, subsample_seed=3)
    two = metrics.compute(["self_bleu"], texts, self_bleu_max_samples=20, subsample_seed=3)
    assert one["metrics"]["self_bleu"]["value"] == two["metrics"]["self_bleu"]["value"]
    assert "pool:sub20-seed3" in one["metrics"]["self_bleu"]["signature"]
    assert one["metrics"]["self_bleu"]["details"]["n_pool"] == 20


def test_self_bleu_of_one_sample_is_null_with_a_reason():
    entry = metrics.compute(["self_bleu"], ["only one"])["metrics"]["self_bleu"]
    assert entry["value"] is None and "at least 2 samples" in entry["error"]


def test_conditional_bleu_equals_sacrebleu_corpus_bleu(shared_lines):
    pairs = shared_lines("quora", "test", 300)
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    sacrebleu = pytest.importorskip("sacrebleu")
    doc = metrics.compute(["bleu"], sources, references=targets, sources=sources)
    expected = sacrebleu.corpus_bleu(sources, [targets])
    assert doc["metrics"]["bleu"]["value"] * 100 == pytest.approx(expected.score, abs=1e-9)
    assert "tok:13a" in doc["metrics"]["bleu"]["signature"]


def test_conditional_sentence_bleu_equals_nltk_against_each_target(shared_lines):
    pairs = shared_lines("quora", "test", 80)
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    doc = metrics.compute(["bleu"], sources, references=targets, task="conditional",
                          bleu_conditional="sentence")
    expected = [bleu_score.sentence_bleu([t.split()], s.split(), (0.25,) * 4, METHOD1)
                for s, t in zip(sources, targets)]
    assert doc["metrics"]["bleu"]["value"] == pytest.approx(np.mean(expected), abs=1e-12)
