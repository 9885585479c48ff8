"""The package's metrics: names, directions, display formats and where each one is computed.

This is where the package is assembled (imported by `metrics/__init__.py`); the metric modules
do not import the registry, and registering imports none of them. A new metric: a function
`fn(ctx) -> dict[key, Score]` in a module of this package and one `register_metric` call here.
"""

from metrics.options import MAX_ORDER
from metrics.registry import register_metric


def _per_order_labels(key: str, label: str) -> dict[str, str]:
    return {key: label, **{f"{key}{n}": f"{label}-{n}" for n in range(1, MAX_ORDER + 1)}}


register_metric("bleu", label="BLEU", higher_is_better=True, display_scale=100, decimals=2,
                version="1", needs="references", impl="metrics.bleu:bleu")
register_metric("self_bleu", label="SB", higher_is_better=False, display_scale=100, decimals=2,
                version="1", needs="samples", impl="metrics.bleu:self_bleu")
register_metric("dist", label="Dist", higher_is_better=True, display_scale=100, decimals=2,
                version="2", needs="samples", impl="metrics.diversity:dist",
                results=_per_order_labels("dist", "Dist"))
register_metric("js", label="JS", higher_is_better=False, display_scale=100, decimals=2,
                version="1", needs="samples", impl="metrics.diversity:js",
                results=_per_order_labels("js", "JS"))
# "CND*": the recipe of Li et al. (2020b) is unconfirmed; this is a bounded stand-in (see cnd.py)
register_metric("cnd", label="CND*", higher_is_better=False, display_scale=1, decimals=2,
                version="1", needs="references", impl="metrics.cnd:cnd")
register_metric("mauve", label="MAUVE", higher_is_better=True, display_scale=1, decimals=2,
                version="1", needs="references", impl="metrics.mauve_metric:mauve",
                model_based=True)
register_metric("rouge", label="ROUGE", higher_is_better=True, display_scale=100, decimals=2,
                version="1", needs="pairs", impl="metrics.rouge:rouge",
                results={"rouge1": "Rouge-1", "rouge2": "Rouge-2", "rougeL": "Rouge-L"})
register_metric("bertscore", label="BERTScore", higher_is_better=True, display_scale=100,
                decimals=2, version="1", needs="pairs", impl="metrics.bertscore:bertscore",
                model_based=True)
