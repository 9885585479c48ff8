"""CND: corpus n-gram divergence between the references and the samples (Li et al. 2020b).

The exact formula of Li et al. (ICML 2020) is unconfirmed (../shared/docs/metrics.md §5). This is
the stated proposal: P_n and Q_n are the empirical n-gram distributions of the reference corpus and
of the sample corpus (counts over all sentences / total n-grams, same tokenisation as BLEU), and

    CND = mean over n in cnd_orders of JSD(P_n, Q_n),
    JSD(P, Q) = 1/2 KL(P || M) + 1/2 KL(Q || M),  M = (P + Q)/2,  natural log,

which is symmetric, 0 for identical corpora and ln 2 for disjoint ones. Lower is better.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from metrics.base import MetricUndefined, Score
from metrics.registry import register_metric


def jensen_shannon(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """JSD (natural log) of two count vectors over the same support; sums only where p (q) > 0."""
    p = p_counts / p_counts.sum()
    q = q_counts / q_counts.sum()
    m = (p + q) / 2
    kl_pm = np.sum(p[p > 0] * np.log(p[p > 0] / m[p > 0]))
    kl_qm = np.sum(q[q > 0] * np.log(q[q > 0] / m[q > 0]))
    return float(0.5 * kl_pm + 0.5 * kl_qm)


def ngram_distribution_counts(counts: sp.csr_matrix) -> np.ndarray:
    """Corpus-level count of every n-gram id (the column sums of a count matrix)."""
    return np.bincount(counts.indices, weights=counts.data, minlength=counts.shape[1])


@register_metric("cnd", label="CND", higher_is_better=False, display_scale=1, decimals=2,
                 version="1", needs="references")
def cnd(ctx) -> dict[str, Score]:
    """CND (proposal): mean over n of the Jensen-Shannon divergence of the n-gram distributions.

    See the module docstring. Reference corpus = the reference file (the test set), sample corpus
    = the samples; the divergence is biased upward when either is small, so both sizes are
    recorded. Registered as `cnd`; the signature says `formula:jsd-proposal`.
    """
    orders = ctx.options.cnd_orders
    by_order = {}
    for n in orders:
        q = ngram_distribution_counts(ctx.ngrams.counts(n, 0))
        p = ngram_distribution_counts(ctx.ngrams.counts(n, 1))
        if p.sum() == 0 or q.sum() == 0:
            side = "references" if p.sum() == 0 else "samples"
            raise MetricUndefined(f"CND: the {side} contain no {n}-grams")
        by_order[str(n)] = jensen_shannon(p, q)
    signature = {"formula": "jsd-proposal", "log": "e", "n": "mean" + "".join(map(str, orders)),
                 "nrefs": len(ctx.references), **ctx.text_signature()}
    details = {"by_order": by_order, "n_samples": len(ctx.samples),
               "n_references": len(ctx.references),
               "unconfirmed": ["CND formula: mean JSD of n-gram distributions is a proposal, "
                               "not checked against Li et al. 2020"]}
    return {"cnd": Score(float(np.mean(list(by_order.values()))), signature, details)}
