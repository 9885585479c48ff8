"""BLEU and Self-BLEU: NLTK's sentence BLEU, computed exactly without looping over references.

For one hypothesis h and references R, NLTK's `sentence_bleu(R, h, weights=(1/N,)*N,
smoothing_function=SmoothingFunction().method1)` (nltk/translate/bleu_score.py) is

    num_n = sum_g min(count_h(g), max_{r in R} count_r(g)),  den_n = max(1, len(h) - n + 1)
    0                                      if num_1 == 0 (checked before smoothing)
    BP * exp(fsum_n (1/N) * log(p_n))      otherwise, p_n = num_n/den_n, or eps/den_n if num_n == 0
    BP = 1 if c > r* else exp(1 - r*/c),   c = len(h), r* = closest reference length (ties: shorter)

Only `max_r count_r(g)` and the multiset of reference lengths depend on R, so:
- multi-reference BLEU (unconditional: every test sentence is a reference of every sample) keeps
  one running maximum per n-gram and the sorted reference lengths;
- Self-BLEU (sample i against all other samples) keeps the largest and second-largest count per
  n-gram, so the maximum over the others is the second one exactly when sample i holds the first,
  and removes one copy of len(i) from the lengths;
- paired BLEU (conditional, sample i against target i) takes elementwise minima.
The per-hypothesis float operations mirror NLTK's, so results equal NLTK's to the last bit.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from metrics.base import MetricUndefined, Score
from metrics.ngrams import NgramCounts, row_sums


def closest_ref_lengths(hyp_lens: Sequence[int], ref_lens: Sequence[int],
                        leave_one_out: bool = False) -> list[int]:
    """NLTK's r* for every hypothesis: the nearest reference length, the shorter on a tie.

    With `leave_one_out`, hypothesis i is itself one of `ref_lens` and one copy of its length is
    left out (Self-BLEU).
    """
    counts = Counter(ref_lens)
    lengths = sorted(counts)
    found: dict[int, int] = {}
    for c in set(hyp_lens):
        if counts.get(c, 0) - leave_one_out > 0:
            found[c] = c
            continue
        j = bisect_left(lengths, c)
        lower = lengths[j - 1] if j > 0 else None
        k = j + 1 if j < len(lengths) and lengths[j] == c else j
        upper = lengths[k] if k < len(lengths) else None
        if lower is None and upper is None:
            raise MetricUndefined("BLEU needs at least one reference per hypothesis")
        found[c] = lower if upper is None or (lower is not None and c - lower <= upper - c) else upper
    return [found[c] for c in hyp_lens]


def bleu_from_stats(num: np.ndarray, hyp_lens: Sequence[int], ref_lens: Sequence[int],
                    epsilon: float = 0.1) -> np.ndarray:
    """Sentence BLEU-k for k = 1..N of every hypothesis, as NLTK computes it.

    `num` has shape (N, M): the clipped n-gram matches of order n = 1..N of hypothesis i;
    `ref_lens[i]` is its closest reference length r*. Returns shape (M, N); column k-1 is BLEU
    with weights (1/k,)*k and method1 smoothing.
    """
    order, n_hyp = num.shape
    num_rows = num.tolist()
    scores = np.zeros((n_hyp, order))
    for i, (c, r) in enumerate(zip(hyp_lens, ref_lens)):
        if num_rows[0][i] == 0:
            continue  # NLTK returns 0 before smoothing: no unigram matches, or an empty hypothesis
        c, r = int(c), int(r)
        bp = 1 if c > r else math.exp(1 - r / c)
        logs = []
        for n in range(1, order + 1):
            matches, den = num_rows[n - 1][i], max(1, c - n + 1)
            logs.append(math.log(matches / den) if matches else math.log((0 + epsilon) / den))
            weight = 1 / n
            scores[i, n - 1] = bp * math.exp(math.fsum(weight * log for log in logs))
    return scores


def multi_reference_matches(hyps: sp.csr_matrix, refs: sp.csr_matrix) -> np.ndarray:
    """Clipped matches of every hypothesis row against all reference rows (one order)."""
    max_ref = np.zeros(hyps.shape[1], dtype=np.int64)
    np.maximum.at(max_ref, refs.indices, refs.data)
    return row_sums(hyps, np.minimum(hyps.data, max_ref[hyps.indices]))


def leave_one_out_matches(counts: sp.csr_matrix) -> np.ndarray:
    """Clipped matches of every row against all other rows (one order), via top-2 counts."""
    by_column = counts.tocsc()
    sizes = np.diff(by_column.indptr)
    column = np.repeat(np.arange(by_column.shape[1]), sizes)
    ranked = by_column.data[np.lexsort((-by_column.data, column))]  # per column, largest first
    top1 = np.zeros(by_column.shape[1], dtype=np.int64)
    top2 = np.zeros(by_column.shape[1], dtype=np.int64)
    top1[sizes >= 1] = ranked[by_column.indptr[:-1][sizes >= 1]]
    top2[sizes >= 2] = ranked[by_column.indptr[:-1][sizes >= 2] + 1]
    first = top1[counts.indices]
    others_max = np.where(counts.data == first, top2[counts.indices], first)
    return row_sums(counts, np.minimum(counts.data, others_max))


def paired_matches(hyps: sp.csr_matrix, refs: sp.csr_matrix) -> np.ndarray:
    """Clipped matches of hypothesis row i against reference row i only (one order)."""
    return np.asarray(hyps.minimum(refs).sum(axis=1), dtype=np.int64).ravel()


def sentence_bleu_multi(ngrams: NgramCounts, order: int, epsilon: float = 0.1,
                        hyp: int = 0, ref: int = 1) -> np.ndarray:
    """(M, order) sentence BLEU-k of every hypothesis against all references (unconditional)."""
    num = np.array([multi_reference_matches(ngrams.counts(n, hyp), ngrams.counts(n, ref))
                    for n in range(1, order + 1)])
    hyp_lens = ngrams.lengths(hyp).tolist()
    return bleu_from_stats(num, hyp_lens, closest_ref_lengths(hyp_lens, ngrams.lengths(ref).tolist()),
                           epsilon)


def sentence_bleu_self(ngrams: NgramCounts, order: int, epsilon: float = 0.1, corpus: int = 0,
                       rows: np.ndarray | None = None) -> np.ndarray:
    """(M, order) sentence BLEU-k of every sample against all other samples (Self-BLEU)."""
    lengths = ngrams.lengths(corpus)
    if rows is not None:
        lengths = lengths[rows]
    if len(lengths) < 2:
        raise MetricUndefined(f"Self-BLEU needs at least 2 samples, got {len(lengths)}")
    num = np.array([leave_one_out_matches(ngrams.counts(n, corpus) if rows is None
                                          else ngrams.counts(n, corpus)[rows])
                    for n in range(1, order + 1)])
    hyp_lens = lengths.tolist()
    return bleu_from_stats(num, hyp_lens, closest_ref_lengths(hyp_lens, hyp_lens, True), epsilon)


def sentence_bleu_paired(ngrams: NgramCounts, order: int, epsilon: float = 0.1,
                         hyp: int = 0, ref: int = 1) -> np.ndarray:
    """(M, order) sentence BLEU-k of hypothesis i against reference i alone (conditional)."""
    num = np.array([paired_matches(ngrams.counts(n, hyp), ngrams.counts(n, ref))
                    for n in range(1, order + 1)])
    return bleu_from_stats(num, ngrams.lengths(hyp).tolist(), ngrams.lengths(ref).tolist(), epsilon)


def _mean_sentence_score(scores: np.ndarray, signature: dict, details: dict) -> Score:
    order = scores.shape[1]
    details = {**details, "n_hypotheses": int(scores.shape[0]),
               "n_zero": int(np.count_nonzero(scores[:, -1] == 0)),
               "by_order": {str(k): float(scores[:, k - 1].mean()) for k in range(1, order + 1)}}
    return Score(float(scores[:, -1].mean()), signature, details)


def _nltk_signature(ctx, nrefs: str) -> dict:
    opts = ctx.options
    return {"task": ctx.task, "nrefs": nrefs, "order": opts.bleu_order, "weights": "uniform",
            "smooth": f"method1-eps{opts.bleu_epsilon:g}", "agg": "mean-sentence",
            "impl": "exact-nltk-sentence_bleu", **ctx.text_signature()}


def bleu(ctx) -> dict[str, Score]:
    """BLEU of the samples (value in [0, 1]).

    Unconditional task: every reference line (the whole test set, no subsampling) is a reference
    of every sample; NLTK sentence BLEU-N, uniform weights, method1 smoothing, averaged over
    samples (Texygen's recipe). Conditional task: sacrebleu corpus BLEU against the aligned
    targets (default; tokenize 13a, exp smoothing), or with `bleu_conditional=sentence` the mean
    NLTK-style sentence BLEU against the single target.
    """
    opts = ctx.options
    if ctx.task == "conditional" and opts.bleu_conditional == "sacrebleu":
        return {"bleu": _sacrebleu(ctx)}
    if ctx.task == "conditional":
        scores = sentence_bleu_paired(ctx.ngrams, opts.bleu_order, opts.bleu_epsilon)
        signature = _nltk_signature(ctx, "1-paired")
    else:
        scores = sentence_bleu_multi(ctx.ngrams, opts.bleu_order, opts.bleu_epsilon)
        signature = _nltk_signature(ctx, f"all-{len(ctx.references)}")
    return {"bleu": _mean_sentence_score(scores, signature,
                                         {"n_references": len(ctx.references)})}


def _sacrebleu(ctx) -> Score:
    from sacrebleu.metrics import BLEU

    metric = BLEU(tokenize=ctx.options.sacrebleu_tokenize, lowercase=ctx.options.lowercase)
    result = metric.corpus_score(ctx.samples.texts, [ctx.references.texts])
    info = metric.get_signature().info  # nrefs, case, eff, tok, smooth, version, ...
    signature = {"task": ctx.task, "impl": "sacrebleu-corpus_bleu", "agg": "corpus",
                 **{k: v for k, v in info.items() if v is not None and k != "version"},
                 "empty": ctx.options.empty, "sacrebleu": info["version"]}
    details = {"precisions": [p / 100 for p in result.precisions], "bp": result.bp,
               "sys_len": result.sys_len, "ref_len": result.ref_len, "n_hypotheses": len(ctx.samples),
               "sacrebleu_signature": str(metric.get_signature())}
    return Score(result.score / 100, signature, details)


def self_bleu(ctx) -> dict[str, Score]:
    """Self-BLEU (value in [0, 1]; lower is more diverse).

    Every sample is scored with NLTK sentence BLEU-N (uniform weights, method1) against all other
    samples as references (leaving out only its own index; duplicates stay references of each
    other), then the scores are averaged. All samples by default (Texygen's fast mode takes the
    first 500); `self_bleu_max_samples` scores a seeded subsample instead.
    """
    opts = ctx.options
    n_samples = len(ctx.samples)
    rows = None
    if 0 < opts.self_bleu_max_samples < n_samples:
        rng = np.random.default_rng(opts.subsample_seed)
        rows = np.sort(rng.choice(n_samples, opts.self_bleu_max_samples, replace=False))
    scores = sentence_bleu_self(ctx.ngrams, opts.bleu_order, opts.bleu_epsilon, rows=rows)
    pool = f"all-{n_samples}" if rows is None else f"sub{len(rows)}-seed{opts.subsample_seed}"
    signature = {**_nltk_signature(ctx, "others"), "task": "samples-only", "pool": pool}
    return {"self_bleu": _mean_sentence_score(scores, signature,
                                              {"n_pool": int(scores.shape[0])})}


def fast_sentence_bleu(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]],
                       order: int = 4, epsilon: float = 0.1) -> np.ndarray:
    """Sentence BLEU-`order` of each tokenised hypothesis against all tokenised references."""
    return sentence_bleu_multi(NgramCounts([hyps, refs], order), order, epsilon)[:, -1]


def fast_self_bleu(samples: Sequence[Sequence[str]], order: int = 4,
                   epsilon: float = 0.1) -> np.ndarray:
    """Sentence BLEU-`order` of each tokenised sample against all the other samples."""
    return sentence_bleu_self(NgramCounts([samples], order), order, epsilon)[:, -1]
