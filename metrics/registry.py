"""The metric registry: every metric declares its name, direction, display format and version once.

A metric registers itself where it is defined::

    @register_metric("dist", label="Dist", higher_is_better=True, display_scale=100, decimals=2,
                     version="1", needs="samples", results={"dist1": "Dist-1"})
    def dist(ctx) -> dict[str, Score]: ...

`get(name)` accepts a registry name (`rouge`) or one of the result keys a metric writes
(`rouge1`, `dist2`); both answers carry `name`, `label`, `higher_is_better`, `display_scale`,
`decimals` and `version`, which is all the table renderer needs. The direction lives here and
nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

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
    """A registered metric: its display metadata, what input it needs and its function."""

    needs: str  # one of NEEDS
    fn: Callable = field(repr=False, compare=False)
    model_based: bool = False  # failures are recorded as value null + error instead of raised
    results: tuple[ResultSpec, ...] = ()

    @property
    def metric(self) -> str:  # as ResultSpec.metric: the registry entry that computes it
        return self.name

    @property
    def result_keys(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.results)


_METRICS: Registry[MetricSpec] = Registry("metric")
_RESULTS: Registry[ResultSpec] = Registry("metric result key")


def register_metric(
    name: str,
    *,
    label: str,
    higher_is_better: bool,
    display_scale: float,
    decimals: int,
    version: str,
    needs: str,
    model_based: bool = False,
    results: dict[str, str] | None = None,
) -> Callable[[Callable], Callable]:
    """Register `fn(ctx) -> dict[result key, Score]` under `name`.

    `results` maps every result key the metric may write to its column label; by default the
    metric writes one key, its own name. Registering a name or result key twice raises ValueError.
    """
    if needs not in NEEDS:
        raise ValueError(f"metric {name!r}: needs must be one of {NEEDS}, got {needs!r}")
    labels = results if results is not None else {name: label}

    def decorator(fn: Callable) -> Callable:
        specs = tuple(
            ResultSpec(key, key_label, higher_is_better, display_scale, decimals, version, name)
            for key, key_label in labels.items()
        )
        _METRICS.register(name)(
            MetricSpec(name, label, higher_is_better, display_scale, decimals, version, needs, fn,
                       model_based, specs)
        )
        for spec in specs:
            _RESULTS.register(spec.name)(spec)
        return fn

    return decorator


def get(name: str) -> MetricSpec | ResultSpec:
    """The spec of a registry name, else of a result key; KeyError with suggestions otherwise."""
    _load_builtin_metrics()
    if name not in _METRICS and name in _RESULTS:
        return _RESULTS.get(name)
    return _METRICS.get(name)


def metric(name: str) -> MetricSpec:
    """The registered metric `name` (not a result key); KeyError with suggestions otherwise."""
    _load_builtin_metrics()
    return _METRICS.get(name)


def names() -> list[str]:
    """The registry names, sorted."""
    _load_builtin_metrics()
    return _METRICS.names()


def result_keys() -> list[str]:
    """Every result key any metric may write, sorted."""
    _load_builtin_metrics()
    return _RESULTS.names()


def _load_builtin_metrics() -> None:
    # The metric modules register themselves on import; importing them here keeps `get` complete
    # even when a caller imported only this module.
    from metrics import bertscore, bleu, cnd, diversity, mauve_metric, rouge  # noqa: F401
