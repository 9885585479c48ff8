"""MAUVE (Pillutla et al. 2021) with mauve-text, on features from a chosen offline encoder."""

from __future__ import annotations

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
    scaling 5. Empty texts are left out, as mauve-text does, and counted. Values from another
    encoder are not comparable with the paper's; MiniLM features are blind to word order (see
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
    out = mauve_text.compute_mauve(p_features=p_features, q_features=q_features,
                                   mauve_scaling_factor=opts.mauve_scaling_factor,
                                   seed=opts.mauve_seed, verbose=False, **settings)
    lm = {"lm": encoder["exported_from"]["model_md5"][:8]} if "exported_from" in encoder else {}
    signature = {"encoder": opts.mauve_encoder_name, **lm, "pool": encoder["pooling"],
                 "maxlen": encoder["max_length"], "buckets": settings["num_buckets"],
                 "redo": settings["kmeans_num_redo"], "iter": settings["kmeans_max_iter"],
                 "c": f"{opts.mauve_scaling_factor:g}", "seed": opts.mauve_seed,
                 "n": f"{len(p_texts)}x{len(q_texts)}", "mauve-text": version("mauve-text")}
    details = {**encoder, **settings, "seed": opts.mauve_seed, "mauve_star": float(out.mauve_star),
               "frontier_integral": float(out.frontier_integral), "n_p": len(p_texts),
               "n_q": len(q_texts), "n_empty_left_out_p": len(ctx.references) - len(p_texts),
               "n_empty_left_out_q": len(ctx.samples) - len(q_texts)}
    return {"mauve": Score(float(out.mauve), signature, details)}
