"""The embedded default measures something: its latents are used, and used differently.

README "What the default shows (and cannot)": with one recipe for every model, the latent models'
MI differs beyond the estimator's standard errors, and the attribute probe finds a content
attribute in some model's latent far beyond its majority baseline. These fail if the default recipe lets every
model collapse (the β = 1 recipes measured there do).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def latent_evals(workdir: Path) -> dict[str, dict]:
    """model -> eval.json metrics of every model with a latent (those with an MI value)."""
    runs = workdir / "results/default/runs/synthetic"
    evals = {run.parent.name: json.loads((run / "eval.json").read_text())["metrics"] for run in runs.glob("*/seed0")}
    return {model: metrics for model, metrics in evals.items() if metrics["mi"]["value"] is not None}


def mi_separated_pairs(evals: dict[str, dict], z: float = 3.0, min_gap: float = 0.5) -> list[tuple[str, str]]:
    """Pairs of models whose MI differs by more than z combined standard errors and by at least
    min_gap nats (collapsed models differ significantly too, by about 0.2 nats at most)."""
    def apart(a: dict, b: dict) -> bool:
        gap = abs(a["value"] - b["value"])
        return gap >= min_gap and gap > z * (a["stderr"] ** 2 + b["stderr"] ** 2) ** 0.5
    return [(m, n) for m, n in itertools.combinations(sorted(evals), 2) if apart(evals[m]["mi"], evals[n]["mi"])]


def probe_gains(evals: dict[str, dict]) -> dict[tuple[str, str], float]:
    """(model, attribute) -> probe accuracy minus the majority-class baseline."""
    return {(model, key.removeprefix("probe_")): entry["value"] - entry["details"]["majority_baseline"]
            for model, metrics in evals.items() for key, entry in metrics.items() if key.startswith("probe_")}


def test_mi_separation_counts_only_gaps_beyond_the_standard_errors():
    evals = {"a": {"mi": {"value": 1.0, "stderr": 0.1}}, "b": {"mi": {"value": 1.2, "stderr": 0.1}},
             "c": {"mi": {"value": 3.0, "stderr": 0.1}}, "d": {"mi": {"value": 1.5, "stderr": 0.001}},
             "e": {"mi": {"value": 1.8, "stderr": 0.001}}}
    # a-b: within the errors; d-e: beyond them but under 0.5 nats; a-d: 0.5 nats, beyond 3 SE
    assert mi_separated_pairs(evals) == [("a", "c"), ("a", "d"), ("a", "e"), ("b", "c"), ("b", "e"),
                                         ("c", "d"), ("c", "e")]


def test_the_default_separates_the_latent_models_in_mi(default_dag):
    evals = latent_evals(default_dag)
    assert len(evals) >= 2
    assert mi_separated_pairs(evals), {m: e["mi"] for m, e in evals.items()}


def test_the_default_probe_finds_a_content_attribute_in_some_latent(default_dag):
    # A collapsed encoder's means still carry some signal (README: length, and tense or topic up to
    # 0.4 above the baseline), so only a larger gain on a content attribute shows a used latent.
    gains = {key: gain for key, gain in probe_gains(latent_evals(default_dag)).items() if key[1] != "length"}
    assert max(gains.values()) > 0.5, gains


def test_every_latent_models_mi_lies_within_zero_and_its_kl_up_to_its_error(default_dag):
    """I(x; z) <= E_x KL(q(z|x) || p(z)) and I >= 0: the paired estimate may leave [0, KL] only by its
    noise (3 standard errors)."""
    for model, metrics in latent_evals(default_dag).items():
        mi, kl = metrics["mi"], metrics["kl"]["value"]
        slack = 3 * mi["stderr"]
        assert -slack <= mi["value"] <= kl + slack, (model, mi["value"], mi["stderr"], kl)
