"""MAUVE (Pillutla et al. 2021) with mauve-text, on features from a chosen offline encoder."""

from __future__ import annotations

import math
import statistics
from importlib.metadata import version

from metrics.base import MetricUndefined, Score
from metrics.encoders import embed_texts

LARGE = 5000  # per side; mauve-text's README advises cheaper k-means above this


def kmeans_settings(n_p: int, n_q: int, opts) -> dict:
    """Buckets and k-means effort: the options, or mauve-text's auto rule (and README advice)."""
    smaller = min(n_p, n_q)
    large = smaller > LARGE
    return {"num_buckets": opts.mauve_num_buckets or (500 if large else max(2, round(smaller / 10))),
            "kmeans_num_redo": opts.mauve_kmeans_num_redo or (1 if large else 5),
            "kmeans_max_iter": opts.mauve_kmeans_max_iter or (100 if large else 500)}


def mauve(ctx) -> dict[str, Score]:
    """MAUVE of the samples (Q) against the references (P), in (0, 1].

    Features: the last hidden layer at the last token, as mauve-text computes them, of
    `mauve_encoder` (default: the offline MiniLM; the paper's GPT-2 large with `encoders=paper`;
    the order-aware choice without a hub is the dataset's own GPT-2 LM, a directory written by
    `python -m della export-lm`, whose weights' MD5 enters the signature as `lm`), truncated to
    `mauve_max_length` tokens, references and samples in one encoder pass.
    `mauve.compute_mauve(p_features, q_features)` then does PCA (90% variance), seeded faiss
    k-means with mauve-text's `auto` bucket rule (min(n)/10; above 5000 texts per side 500
    buckets, 1 restart, 100 iterations, as its README advises) and the divergence frontier with
    scaling 5, once per seed of `mauve_seeds` (5: seeds 25-29): the value is their mean, the
    stderr their std / sqrt(n), as mauve-text advises reporting several k-means seeds. Empty
    texts are left out, as mauve-text does, and counted. Values from another encoder are not
    comparable with the paper's; MiniLM features are blind to word order (see
    the `mauve_pooling` option for the PTB numbers).
    """
    import mauve as mauve_text

    opts = ctx.options
    p_texts = [t for t in ctx.references.texts if t]
    q_texts = [t for t in ctx.samples.texts if t]
    if len(p_texts) < 2 or len(q_texts) < 2:
        raise MetricUndefined("MAUVE needs at least 2 non-empty samples and references")
    encode = dict(name=opts.mauve_encoder_name, pooling=opts.mauve_pooling,
                  max_length=opts.mauve_max_length, batch_size=opts.batch_size, device=opts.device,
                  allow_download=opts.allow_download)
    features, encoder = embed_texts(p_texts + q_texts, **encode)  # one pass, one model load
    p_features, q_features = features[:len(p_texts)], features[len(p_texts):]
    settings = kmeans_settings(len(p_texts), len(q_texts), opts)
    seeds = range(opts.mauve_seed, opts.mauve_seed + opts.mauve_seeds)
    runs = [mauve_text.compute_mauve(p_features=p_features, q_features=q_features,
                                     mauve_scaling_factor=opts.mauve_scaling_factor,
                                     seed=seed, verbose=False, **settings) for seed in seeds]
    values = [float(out.mauve) for out in runs]
    lm = {"lm": encoder["exported_from"]["model_md5"][:8]} if "exported_from" in encoder else {}
    signature = {"encoder": opts.mauve_encoder_name, **lm, "pool": encoder["pooling"],
                 "maxlen": encoder["max_length"], "buckets": settings["num_buckets"],
                 "redo": settings["kmeans_num_redo"], "iter": settings["kmeans_max_iter"],
                 "c": f"{opts.mauve_scaling_factor:g}",
                 "seed": seeds[0] if len(seeds) == 1 else f"{seeds[0]}..{seeds[-1]}-mean",
                 "n": f"{len(p_texts)}x{len(q_texts)}", "mauve-text": version("mauve-text")}
    details = {**encoder, **settings, "seeds": list(seeds), "by_seed": values,
               "mauve_star": statistics.fmean(float(out.mauve_star) for out in runs),
               "frontier_integral": statistics.fmean(float(out.frontier_integral) for out in runs),
               "n_p": len(p_texts), "n_q": len(q_texts), "n_empty_left_out_p": len(ctx.references) - len(p_texts),
               "n_empty_left_out_q": len(ctx.samples) - len(q_texts)}
    stderr = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return {"mauve": Score(statistics.fmean(values), signature, details, stderr=stderr)}
