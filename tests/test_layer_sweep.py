"""Fig. 2 (`python -m della layer-sweep`): DELLA runs with layer ranges -> two series of points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from della.cli import main
from della.layer_sweep import sweep_points


def write_eval(tmp_path: Path, name: str, begin: int, end: int | None, ppl: float, seed: int = 0,
               model: str = "della") -> Path:
    path = tmp_path / name / f"seed{seed}" / "eval.json"
    path.parent.mkdir(parents=True)
    metrics = {key: {"value": value} for key, value in (("iw_ppl", ppl), ("neg_elbo", ppl + 10), ("kl", None))}
    path.write_text(json.dumps({"config": {"model": model, "model_args": {"begin_layer": begin, "end_layer": end},
                                           "backbone": {"n_layer": 4}}, "metrics": metrics}))
    return path


def test_runs_fall_into_the_start_and_end_series_by_their_latent_layer_count(tmp_path):
    paths = [write_eval(tmp_path, "all", 0, None, 10.0), write_eval(tmp_path, "all", 0, 4, 12.0, seed=1),
             write_eval(tmp_path, "start3", 2, None, 20.0), write_eval(tmp_path, "end1", 0, 1, 30.0)]
    points = sweep_points(paths)
    assert points == {"start layer i": {2: {"iw_ppl": 20.0, "neg_elbo": 30.0}, 4: {"iw_ppl": 11.0, "neg_elbo": 21.0}},
                      "end layer j": {1: {"iw_ppl": 30.0, "neg_elbo": 40.0}, 4: {"iw_ppl": 11.0, "neg_elbo": 21.0}}}
    out = tmp_path / "fig2.svg"
    main(["layer-sweep", "--evals", *map(str, paths), "--out", str(out)])
    assert out.read_text().startswith("<?xml") and "latent layers" in out.read_text()


@pytest.mark.parametrize("begin, end, model, message", [
    (1, 3, "della", "start after the first and end before the last layer"),
    (0, None, "embed", "not a DELLA run with a layer range"),
    (3, 2, "della", "not a DELLA run with a layer range"),
])
def test_runs_outside_both_series_are_refused_naming_the_file(tmp_path, begin, end, model, message):
    path = write_eval(tmp_path, "x", begin, end, 1.0, model=model)
    with pytest.raises(ValueError, match=message) as err:
        sweep_points([path])
    assert str(path) in str(err.value)
