"""ROUGE-1/2/L with Google's rouge-score, averaged over sample/target pairs."""

from __future__ import annotations

import re
from importlib.metadata import version

import numpy as np

from metrics.base import Score

# rougeLsum's summary-level LCS reads a text's sentences off its lines. A sample is one line, a target
# may keep its own line breaks (WritingPrompts' paragraphs), so both are split by one rule: a sentence
# ends at ., ! or ? followed by whitespace (nltk's punkt would need a download), and no other break counts
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentence_lines(text: str) -> str:
    return "\n".join(SENTENCE_END.split(" ".join(text.split())))


def rouge_fmeasures(targets: list[str], predictions: list[str], rouge_types: list[str],
                    use_stemmer: bool) -> dict[str, np.ndarray]:
    """Per-pair (precision, recall, F) arrays, shape (n_pairs, 3), for every rouge type."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(rouge_types, use_stemmer=use_stemmer)
    rows = [scorer.score(target, prediction) for target, prediction in zip(targets, predictions)]
    return {t: np.array([[r[t].precision, r[t].recall, r[t].fmeasure] for r in rows]).reshape(-1, 3)
            for t in rouge_types}


def rouge(ctx) -> dict[str, Score]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measure of each sample against its target, averaged.

    `RougeScorer(types, use_stemmer).score(target, sample)` (target first) with rouge-score's own
    tokenizer (lowercase, non-alphanumerics to spaces); arithmetic mean of the per-pair F, not the
    bootstrap mid. ROUGE-L is sentence-level `rougeL` unless `rouge_l=rougeLsum` (unconfirmed
    which DELLA used), whose texts are split into sentences first (`SENTENCE_END`; ROUGE-1/2 ignore
    the line breaks); the stemmer is off, rouge-score's default (unconfirmed). DELLA used
    rouge-score 0.0.4; the version used here is in the signature.
    """
    opts = ctx.options
    types = {"rouge1": "rouge1", "rouge2": "rouge2", "rougeL": opts.rouge_l}
    targets, samples = ctx.references.texts, ctx.samples.texts
    if opts.rouge_l == "rougeLsum":
        targets, samples = [sentence_lines(t) for t in targets], [sentence_lines(t) for t in samples]
    scores = rouge_fmeasures(targets, samples, list(types.values()), opts.rouge_stemmer)
    results = {}
    for key, rouge_type in types.items():
        table = scores[rouge_type]
        signature = {"type": rouge_type, **({"split": "sentence-end-.!?"} if rouge_type == "rougeLsum" else {}),
                     "stem": "yes" if opts.rouge_stemmer else "no", "tok": "rouge-score-default", "agg": "mean-F",
                     "empty": opts.empty, "rouge-score": version("rouge-score")}
        details = {"precision": float(table[:, 0].mean()), "recall": float(table[:, 1].mean()),
                   "n_pairs": len(table)}
        if key == "rougeL":
            details["unconfirmed"] = ["rougeL vs rougeLsum", "stemmer off"]
        results[key] = Score(float(table[:, 2].mean()), signature, details)
    return results
