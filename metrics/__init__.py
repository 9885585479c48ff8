"""della-bench generation metrics: BLEU, Self-BLEU, Dist, JS, CND, MAUVE, ROUGE, BERTScore.

Python API::

    import metrics
    doc = metrics.compute(["bleu", "self_bleu"], "samples.txt", references="test.txt")
    metrics.write_json(doc, "metrics.json")
    metrics.registry.get("self_bleu").higher_is_better   # False
    metrics.check_metric_names(["bleu", {"name": "mauve", "optional": True}], paired=False)

Command line: ``python -m metrics compute --samples S.txt --references R.txt --metrics bleu,cnd
--out M.json`` (``python -m metrics list`` shows the registry). Recipes: each metric's docstring,
repeated in the JSON it writes, and ../shared/docs/metrics.md.
"""

from importlib.metadata import PackageNotFoundError, version

from metrics import catalog, registry  # noqa: F401 - catalog registers the metrics
from metrics.compute import compute, write_json
from metrics.inputs import InputError
from metrics.options import MetricOptions
from metrics.registry import check_metric_names

try:
    __version__ = version("della-bench")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["compute", "write_json", "registry", "check_metric_names", "MetricOptions", "InputError",
           "__version__"]
