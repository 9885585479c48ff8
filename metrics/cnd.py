"""CND*: corpus n-gram divergence between the references and the samples, a stand-in for the CND
of Li et al. (2020b), whose recipe is not known here.

What DELLA says: "CND approximates the divergence of the empirical reference distribution and
generated text distribution in n-gram spaces" (lower is better), citing Li, Lan, Guo and Cheng
(ICML 2020), a paper that proves that a linear combination of a quality and a diversity metric
can be a divergence and proposes the CR/NRR pair. Neither that paper's text nor any code of CND
could be read for this project (../shared/docs/metrics.md §5), so the recipe is unconfirmed and
the table labels the column "CND*".

What this computes: P_n and Q_n are the empirical n-gram distributions of the reference corpus
and of the sample corpus (counts over all sentences / total n-grams, same tokenisation as BLEU),

    CND* = mean over n in cnd_orders of JSD(P_n, Q_n),
    JSD(P, Q) = 1/2 KL(P || M) + 1/2 KL(Q || M),  M = (P + Q)/2,  natural log,

symmetric, 0 for identical corpora and ln 2 = 0.69 for disjoint ones. It cannot be the paper's
formula: the paper prints CND 1.12-1.39 on PTB and up to 1.95 on SNLI (Table 8), above ln 2.
Human text scored like a run (200 seeded validation lines against the whole test split) gives
the values in metrics/reference/human.csv (PTB 0.49, SNLI 0.48, Yahoo 0.46); on the same 200
lines the sum over n = 1..4 would be 1.95, 1.91 and 1.82, i.e. above most of the paper's model
values, so no simple rescaling of this divergence reproduces the paper's column either.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from metrics.base import MetricUndefined, Score


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


def cnd(ctx) -> dict[str, Score]:
    """CND* (unconfirmed stand-in for CND): mean over n of the Jensen-Shannon divergence of the
    n-gram distributions of the references and the samples.

    See the module docstring. Reference corpus = the reference file (the test set), sample corpus
    = the samples; the divergence is biased upward when either is small, so both sizes are
    recorded. Labelled "CND*" in tables; the signature says `formula:jsd-proposal`.
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
                 "samples": len(ctx.samples), "nrefs": len(ctx.references), **ctx.text_signature()}
    details = {"by_order": by_order, "n_samples": len(ctx.samples),
               "n_references": len(ctx.references),
               "unconfirmed": ["CND* is a stand-in: mean JSD of n-gram distributions, bounded "
                               "by ln 2, while the paper prints CND up to 1.95; Li et al. 2020b's "
                               "recipe could not be read"]}
    return {"cnd": Score(float(np.mean(list(by_order.values()))), signature, details)}
