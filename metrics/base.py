"""What a metric function returns: a Score with its value, signature fields and verbose details."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class MetricUndefined(ValueError):
    """The metric has no value on this input (e.g. Self-BLEU of one sample); recorded as an error."""


@dataclass
class Score:
    """One result key of a metric.

    `value` is on the metric's natural scale (BLEU in [0, 1], not ×100); the registry's
    display_scale turns it into the paper's scale. `signature` holds every recipe setting that
    changes the number, in order; the driver appends versions and formats it sacrebleu-style
    (`key:value|key:value`). `details` holds verbose parts (per-order values, counts).
    """

    value: float | None
    signature: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    stderr: float | None = None  # the estimator's standard error on this one input, where it has one
