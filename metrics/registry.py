"""The metric registry: every metric declares its name, direction, display format and version once.

The registry imports none of its members. The package registers its metrics in
`metrics/catalog.py` (imported by `metrics/__init__.py`) by name, metadata and the dotted path of
the function that computes them::

    register_metric("dist", label="Dist", higher_is_better=True, display_scale=100, decimals=2,
                    version="1", needs="samples", impl="metrics.diversity:dist",
                    results={"dist1": "Dist-1"})

so names, directions and input needs are known without importing numpy, torch or an encoder; the
function is imported on first use (`spec.fn`). `get(name)` accepts a registry name (`rouge`) or
one of the result keys a metric writes (`rouge1`, `dist2`); both answers carry `name`, `label`,
`higher_is_better`, `display_scale`, `decimals` and `version`, which is all the table renderer
needs. `check_metric_names` validates a config's metric list (used by the workflow at DAG build).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from della.registry import Registry

NEEDS = ("samples", "references", "pairs")  # pairs: one reference per sample, aligned by line


@dataclass(frozen=True)
class DisplaySpec:
    """What the tables need: column label, direction (↑/↓, bold-best), scale and decimals."""

    name: str
    label: str
    higher_is_better: bool
    display_scale: float  # the table shows value * display_scale
    decimals: int
    version: str  # bumped whenever the recipe changes the number


@dataclass(frozen=True)
class ResultSpec(DisplaySpec):
    """One result key of a metric (e.g. `rouge2` of the `rouge` metric)."""

    metric: str  # the registry entry that computes it


@dataclass(frozen=True)
class MetricSpec(DisplaySpec):
    """A registered metric: its display metadata, what input it needs and where its function is."""

    needs: str  # one of NEEDS
    impl: str  # "package.module:function", imported on first use
    model_based: bool = False  # loads a pretrained encoder
    results: tuple[ResultSpec, ...] = ()

    @property
    def metric(self) -> str:  # as ResultSpec.metric: the registry entry that computes it
        return self.name

    @property
    def result_keys(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.results)

    @property
    def paired(self) -> bool:
        """Defined only where each sample has its own reference (conditional tasks)."""
        return self.needs == "pairs"

    @property
    def fn(self) -> Callable:
        module, function = self.impl.split(":")
        return getattr(importlib.import_module(module), function)


_METRICS: Registry[MetricSpec] = Registry("metric")
_RESULTS: Registry[ResultSpec] = Registry("metric result key")


def register_metric(name: str, *, label: str, higher_is_better: bool, display_scale: float,
                    decimals: int, version: str, needs: str, impl: str, model_based: bool = False,
                    results: dict[str, str] | None = None) -> MetricSpec:
    """Register the metric `name`, computed by `impl` ("module:function", `fn(ctx) -> dict[key,
    Score]`).

    `results` maps every result key the metric may write to its column label; by default the
    metric writes one key, its own name. Registering a name or result key twice raises ValueError.
    """
    if needs not in NEEDS:
        raise ValueError(f"metric {name!r}: needs must be one of {NEEDS}, got {needs!r}")
    labels = results if results is not None else {name: label}
    specs = tuple(ResultSpec(key, key_label, higher_is_better, display_scale, decimals, version, name)
                  for key, key_label in labels.items())
    spec = MetricSpec(name, label, higher_is_better, display_scale, decimals, version, needs, impl,
                      model_based, specs)
    _METRICS.register(name)(spec)
    for result in specs:
        _RESULTS.register(result.name)(result)
    return spec


def get(name: str) -> MetricSpec | ResultSpec:
    """The spec of a registry name, else of a result key; KeyError with suggestions otherwise."""
    if name not in _METRICS and name in _RESULTS:
        return _RESULTS.get(name)
    return _METRICS.get(name)


def metric(name: str) -> MetricSpec:
    """The registered metric `name` (not a result key); KeyError with suggestions otherwise."""
    return _METRICS.get(name)


def names() -> list[str]:
    """The registry names, sorted."""
    return _METRICS.names()


def result_keys() -> list[str]:
    """Every result key any metric may write, sorted."""
    return _RESULTS.names()


def check_metric_names(entries: Sequence[Any], paired: bool,
                       key: str = "text_metrics") -> tuple[list[str], list[str]]:
    """Validate a config's metric list; return (names, the names marked optional).

    An entry is a registry name or `{name: <registry name>, optional: <bool>}`. An optional metric
    that cannot be computed is recorded as null with its error; any other failure fails the job.
    Raises ValueError naming `key`, the entry and the valid choices (with a did-you-mean) for an
    unknown name, a malformed or repeated entry, or a pair metric (ROUGE, BERTScore) where
    `paired` is False: unconditional samples have no reference of their own.
    """
    chosen, optional = [], []
    for index, entry in enumerate(entries):
        where = f"{key}[{index}]"
        name, is_optional = _entry(entry, where)
        if name not in _METRICS:
            close = difflib.get_close_matches(name, names(), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"{where}: unknown text metric {name!r}.{hint} Valid: {names()}")
        if _METRICS.get(name).paired and not paired:
            unpaired = [n for n in names() if not _METRICS.get(n).paired]
            raise ValueError(f"{where}: {name!r} scores each sample against its own reference, "
                             "which only conditional tasks have; unconditional samples have none. "
                             f"Valid here: {unpaired}")
        if name in chosen:
            raise ValueError(f"{where}: text metric {name!r} is listed twice")
        chosen.append(name)
        if is_optional:
            optional.append(name)
    return chosen, optional


def _entry(entry: Any, where: str) -> tuple[str, bool]:
    if isinstance(entry, str):
        return entry, False
    if (isinstance(entry, dict) and set(entry) <= {"name", "optional"}
            and isinstance(entry.get("name"), str) and isinstance(entry.get("optional", False), bool)):
        return entry["name"], entry.get("optional", False)
    raise ValueError(f"{where}: expected a metric name or {{name: <metric>, optional: true|false}}, "
                     f"got {entry!r}")
