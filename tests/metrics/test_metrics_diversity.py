"""Dist, JS and CND against direct set/Counter computations of their formulas."""

from __future__ import annotations

import math
import random
from collections import Counter
from itertools import combinations

import pytest

import metrics
from metrics.diversity import mean_pairwise_jaccard
from metrics.ngrams import NgramCounts


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def direct_dist(corpus, n):
    grams = [g for s in corpus for g in ngrams(s, n)]
    return len(set(grams)) / len(grams)


def direct_js(corpus, n):
    sets = [set(ngrams(s, n)) for s in corpus]
    sims = [len(a & b) / len(a | b) if a | b else 0.0 for a, b in combinations(sets, 2)]
    return sum(sims) / len(sims)


def direct_cnd(references, samples, orders):
    total = 0.0
    for n in orders:
        p, q = (Counter(g for s in corpus for g in ngrams(s, n)) for corpus in (references, samples))
        p_total, q_total = sum(p.values()), sum(q.values())
        jsd = 0.0
        for counts, size in ((p, p_total), (q, q_total)):
            for g, c in counts.items():
                m = (p[g] / p_total + q[g] / q_total) / 2
                jsd += 0.5 * (c / size) * math.log((c / size) / m)
        total += jsd
    return total / len(orders)


def random_texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(12)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(0, 9))) for _ in range(n)]


@pytest.mark.parametrize("seed", range(4))
def test_dist_js_cnd_equal_direct_computation_on_random_input(seed):
    samples, references = random_texts(seed, 40), random_texts(seed + 50, 30)
    doc = metrics.compute(["dist", "js", "cnd"], samples, references=references,
                          dist_orders=(1, 2, 3, 4), js_orders=(1, 2, 3, 4))["metrics"]
    corpus, refs = [s.split() for s in samples], [r.split() for r in references]
    for n in (1, 2, 3, 4):
        assert doc[f"dist{n}"]["value"] == pytest.approx(direct_dist(corpus, n), abs=1e-12)
        assert doc[f"js{n}"]["value"] == pytest.approx(direct_js(corpus, n), abs=1e-12)
    assert doc["dist"]["value"] == pytest.approx(sum(direct_dist(corpus, n) for n in range(1, 5)) / 4)
    assert doc["js"]["value"] == pytest.approx(sum(direct_js(corpus, n) for n in range(1, 5)) / 4)
    assert doc["cnd"]["value"] == pytest.approx(direct_cnd(refs, corpus, (1, 2, 3, 4)), abs=1e-12)


def test_dist_js_cnd_equal_direct_computation_on_real_text(shared_lines):
    samples, references = shared_lines("ptb", "valid", 300), shared_lines("ptb", "test", 400)
    doc = metrics.compute(["dist", "js", "cnd"], samples, references=references,
                          dist_orders=(1, 2), js_orders=(1, 2), cnd_orders=(1, 2, 3))["metrics"]
    corpus, refs = [s.split() for s in samples], [r.split() for r in references]
    for n in (1, 2):
        assert doc[f"dist{n}"]["value"] == pytest.approx(direct_dist(corpus, n), abs=1e-12)
        assert doc[f"js{n}"]["value"] == pytest.approx(direct_js(corpus, n), abs=1e-12)
    assert doc["cnd"]["value"] == pytest.approx(direct_cnd(refs, corpus, (1, 2, 3)), abs=1e-12)


@pytest.mark.parametrize("block_entries", [1, 7, 100, 1 << 22])
def test_jaccard_does_not_depend_on_the_block_size(block_entries):
    corpus = [t.split() for t in random_texts(9, 33)]
    counts = NgramCounts([corpus], 2).counts(2, 0)
    assert mean_pairwise_jaccard(counts, block_entries) == pytest.approx(direct_js(corpus, 2),
                                                                         abs=1e-12)


def test_known_values_identical_and_disjoint_sets():
    same = ["a b c d", "a b c d", "a b c d"]
    doc = metrics.compute(["js", "dist", "cnd"], same, references=same)["metrics"]
    assert doc["js"]["value"] == pytest.approx(1.0)
    assert doc["dist1"]["value"] == pytest.approx(4 / 12)
    assert doc["cnd"]["value"] == pytest.approx(0.0, abs=1e-15)
    disjoint = metrics.compute(["cnd"], ["x y z w"], references=["a b c d"])["metrics"]["cnd"]
    assert disjoint["value"] == pytest.approx(math.log(2))
    swapped = metrics.compute(["cnd"], same, references=["a b x d", "b c"])["metrics"]["cnd"]
    back = metrics.compute(["cnd"], ["a b x d", "b c"], references=same)["metrics"]["cnd"]
    assert swapped["value"] == pytest.approx(back["value"])  # symmetric


def test_orders_without_ngrams_are_null_with_a_reason():
    doc = metrics.compute(["dist"], ["a b", "c"], dist_orders=(1, 3))["metrics"]
    assert doc["dist1"]["value"] == pytest.approx(1.0)
    assert doc["dist3"]["value"] is None and "no 3-grams" in doc["dist3"]["error"]
    assert doc["dist"]["value"] is None and "no 3-grams" in doc["dist"]["error"]
