"""Diversity of the samples alone: Dist-n (Li et al. 2016) and JS (pairwise n-gram Jaccard)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from metrics.base import MetricUndefined, Score

BLOCK_ENTRIES = 1 << 22  # bound on the pairs held at once by the blocked X @ X.T


def distinct_ngrams(counts: sp.csr_matrix) -> tuple[int, int]:
    """(distinct n-grams, total n-grams) of a sentences x n-grams count matrix."""
    return int(np.unique(counts.indices).size), int(counts.sum())


def mean_pairwise_jaccard(counts: sp.csr_matrix, block_entries: int = BLOCK_ENTRIES) -> float:
    """Mean over all unordered pairs {i < j} of |A_i ∩ A_j| / |A_i ∪ A_j| (0 for two empty sets).

    A_i is the set of n-grams of row i. With the binary incidence matrix X, the intersections are
    the entries of X @ X.T; they are computed for row blocks against the rows from the block on,
    so at most about `block_entries` pairs are held at once. Pairs sharing nothing add 0, but
    count in the M(M-1)/2 of the mean.
    """
    n_rows = counts.shape[0]
    if n_rows < 2:
        raise MetricUndefined(f"JS needs at least 2 samples, got {n_rows}")
    incidence = sp.csr_matrix((np.ones_like(counts.data, dtype=np.int32), counts.indices,
                               counts.indptr), shape=counts.shape)
    sizes = np.diff(incidence.indptr).astype(np.float64)
    block = max(1, block_entries // n_rows)
    total = 0.0
    for start in range(0, n_rows, block):
        stop = min(start + block, n_rows)
        shared = (incidence[start:stop] @ incidence[start:].T).tocoo()
        upper = shared.col > shared.row  # column j is row start + col: keep j > i
        inter = shared.data[upper].astype(np.float64)
        rows, cols = shared.row[upper] + start, shared.col[upper] + start
        total += float(np.sum(inter / (sizes[rows] + sizes[cols] - inter)))
    return total / (n_rows * (n_rows - 1) / 2)


def _orders_and_mean(key: str, orders: tuple[int, ...], one_order, signature: dict,
                     details: dict) -> dict[str, Score]:
    """`<key><n>` for every order (value, details = one_order(n)) and `<key>`, their mean."""
    per_order = {}
    for n in orders:
        try:
            value, extra = one_order(n)
            per_order[f"{key}{n}"] = Score(value, {"n": n, **signature}, extra)
        except MetricUndefined as err:
            per_order[f"{key}{n}"] = Score(None, {"n": n, **signature}, error=str(err))
    mean_signature = {"n": "mean" + "".join(map(str, orders)), **signature}
    values = [score.value for score in per_order.values()]
    if None in values:
        errors = "; ".join(s.error for s in per_order.values() if s.error)
        mean = Score(None, mean_signature, details, f"undefined for some order: {errors}")
    else:
        by_order = {str(n): v for n, v in zip(orders, values)}
        mean = Score(float(np.mean(values)), mean_signature, {**details, "by_order": by_order})
    return {key: mean, **per_order}


def dist(ctx) -> dict[str, Score]:
    """Dist-n, corpus level: distinct n-grams of all samples / total n-grams of all samples.

    N-grams are counted within sentences; the denominator is the n-gram count
    sum_i max(0, len_i - n + 1), not the token count. Writes `dist<n>` for every order in
    `dist_orders` and `dist`, their mean. The default orders are (1,): which n DELLA's single
    Dist column is, is unconfirmed, and Dist-1 is the only order whose values on human text land
    on the paper's scale (PTB valid, 200 seeded lines vs the paper's 34-42 for its models:
    Dist-1 34.2, Dist-2 82.8, Dist-3 96.9, the mean of 1-4 78.3). Dist falls as the sample count
    grows (PTB Dist-1: 17.5 at 1000 lines), so compare only at equal counts.
    """
    def one_order(n: int) -> tuple[float, dict]:
        unique, total = distinct_ngrams(ctx.ngrams.counts(n, 0))
        if total == 0:
            raise MetricUndefined(f"the samples contain no {n}-grams")
        return unique / total, {"distinct": unique, "total": total}

    details = {"n_samples": len(ctx.samples),
               "unconfirmed": ["which n DELLA's Dist is: `dist` is the mean over dist_orders, "
                               "default (1,), the order on the paper's scale for human text"]}
    return _orders_and_mean("dist", ctx.options.dist_orders, one_order,
                            {"agg": "corpus", "den": "ngrams", "samples": len(ctx.samples), **ctx.text_signature()},
                            details)


def js(ctx) -> dict[str, Score]:
    """JS: mean over unordered sample pairs of the Jaccard similarity of their n-gram sets.

    Sets, not multisets; J = 0 for two empty sets; every pair {i < j} counts once, on a 0-1
    scale, displayed x100. Writes `js<n>` for every order in `js_orders` and `js`, their mean.
    DELLA's wording (average pairwise Jaccard) is followed, not SentiGAN's 1 - max; n is
    unconfirmed. The default n = 2 (x100) is the reading that reproduces the paper's scale:
    GPT-2 samples of PTB give about 0.3 here, the paper prints 0.30.
    """
    details = {"n_samples": len(ctx.samples),
               "unconfirmed": ["n-gram order of DELLA's JS (default 2, x100, matches the paper's scale)",
                               "mean over pairs (DELLA's wording) vs 1 - max (SentiGAN)"]}
    return _orders_and_mean("js", ctx.options.js_orders,
                            lambda n: (mean_pairwise_jaccard(ctx.ngrams.counts(n, 0)), {}),
                            {"pairs": "unordered-all", "sets": "distinct", "samples": len(ctx.samples),
                             **ctx.text_signature()},
                            details)
