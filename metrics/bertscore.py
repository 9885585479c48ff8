"""BERTScore (Zhang et al. 2020) with the bert-score package, on an offline model by default."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import numpy as np

from metrics.base import MetricUndefined, Score
from metrics.encoders import MINILM, resolve_encoder

MINILM_LAYERS = 6  # the last of MiniLM's 6 layers; no tuned layer exists (unconfirmed)


def build_scorer(opts, idf_sents: list[str] | None):
    """(bert_score.BERTScorer, layer) for the configured model, loaded offline."""
    import bert_score

    name = opts.bertscore_model_name
    layers = opts.bertscore_num_layers or (MINILM_LAYERS if name == MINILM
                                           else bert_score.utils.model2layers.get(name))
    if layers is None:
        raise MetricUndefined(f"bert-score has no default layer for {name!r}; set "
                              "bertscore_num_layers")
    baseline = None
    if opts.bertscore_rescale:  # looked up by model name: the model is passed as a local path
        baseline = Path(bert_score.__file__).parent / "rescale_baseline" / "en" / f"{name}.tsv"
        if not baseline.is_file():
            raise MetricUndefined(f"bert-score ships no English baseline for {name!r}")
    scorer = bert_score.BERTScorer(
        model_type=resolve_encoder(name, opts.allow_download), num_layers=layers,
        idf=opts.bertscore_idf, idf_sents=idf_sents if opts.bertscore_idf else None,
        batch_size=opts.batch_size, device=opts.device,
        lang="en" if opts.bertscore_rescale else None, rescale_with_baseline=opts.bertscore_rescale,
        baseline_path=str(baseline) if baseline else None)
    return scorer, layers


def pairs_per_call(batch_size: int) -> int:
    """Pairs per bert-score call: at most 2 x that many unique sentences, so one batch embeds them all.

    bert-score orders a call's unique sentences by length with ties in a Python set's order, which the
    interpreter's hash seed decides, and embeds them in batches of `batch_size`: over several batches
    the padding each sentence gets, and so BERTScore's ninth digit, would change with the hash seed.
    One batch per call pads every sentence of a call alike, whatever their order.
    """
    return max(1, batch_size // 2)


def bertscore(ctx) -> dict[str, Score]:
    """Mean BERTScore F1 of each sample against its target (P and R in details).

    bert-score's `BERTScorer(model_type, num_layers, idf=False, rescale_with_baseline=False)
    .score(samples, targets)`, which `bert_score.score` also runs: greedy cosine matching of the
    token embeddings of layer `num_layers`. Default model: the offline MiniLM (layer 6, its
    last); the paper's roberta-large (layer 17 from bert-score's table) with `encoders=paper`.
    A pair with an empty sample or target scores what bert-score itself documents for empty
    strings (it cannot encode them with transformers 5): 0, rescaled with the baseline b to
    -b / (1 - b) as every score is under `bertscore_rescale`; such pairs are counted.
    """
    opts = ctx.options
    pairs = [i for i, (s, r) in enumerate(zip(ctx.samples.texts, ctx.references.texts)) if s and r]
    if not pairs:
        raise MetricUndefined("BERTScore: every pair has an empty sample or target")
    cands = [ctx.samples.texts[i] for i in pairs]
    refs = [ctx.references.texts[i] for i in pairs]
    # the IDF (if on): once, from every target, as bert-score computes it from the references it is given
    scorer, layers = build_scorer(opts, idf_sents=list(ctx.references.texts))
    # pairs of similar length share a call, so little of a call's one batch is padding: 300 pairs whose
    # sample and target have equal lengths took as long as bert-score's own batching, of unrelated
    # lengths 1.8 times as long (both sides of a pair are padded to the longer)
    by_length = sorted(range(len(pairs)), key=lambda i: max(len(cands[i].split()), len(refs[i].split())))
    chunk = pairs_per_call(opts.batch_size)
    scored = np.empty((len(pairs), 3))
    for start in range(0, len(pairs), chunk):
        rows = by_length[start:start + chunk]
        p, r, f = scorer.score([cands[i] for i in rows], [refs[i] for i in rows], batch_size=opts.batch_size)
        scored[rows] = np.stack([p.numpy(), r.numpy(), f.numpy()], axis=1)
    empty = np.zeros(3)  # P, R, F of a pair with an empty side
    if opts.bertscore_rescale:
        baseline = scorer.baseline_vals.numpy()
        empty = (empty - baseline) / (1 - baseline)
    scores = np.tile(empty, (len(ctx.samples), 1))
    scores[pairs] = scored
    name = opts.bertscore_model_name
    signature = {"model": name, "layer": layers, "idf": "yes" if opts.bertscore_idf else "no",
                 "rescale": "yes" if opts.bertscore_rescale else "no", "agg": "mean-F1",
                 "empty": opts.empty, "bert-score": version("bert-score")}
    details = {"precision": float(scores[:, 0].mean()), "recall": float(scores[:, 1].mean()),
               "model_path": scorer.model_type, "hash": scorer.hash, "n_pairs": len(scores),
               "n_empty_pairs": len(scores) - len(pairs), "empty_pair_f1": float(empty[2])}
    if name == MINILM:
        details["unconfirmed"] = ["MiniLM layer 6 (no tuned layer); not comparable with the "
                                  "paper's roberta-large numbers"]
    return {"bertscore": Score(float(scores[:, 2].mean()), signature, details)}
