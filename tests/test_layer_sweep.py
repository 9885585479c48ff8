"""Fig. 2 (`python -m della layer-sweep`): DELLA runs with layer ranges -> two series of points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from della.cli import main
from della.layer_sweep import sweep_points


def write_eval(tmp_path: Path, name: str, begin: int, end: int | None, ppl: float, seed: int = 0,
               model: str = "della", dataset: str = "d", **args) -> Path:
    """An eval.json of a run whose latents are in layers begin..end (end_layer: the last one, inclusive)."""
    path = tmp_path / dataset / name / f"seed{seed}" / "eval.json"
    path.parent.mkdir(parents=True)
    metrics = {key: {"value": value} for key, value in (("iw_ppl", ppl), ("neg_elbo", ppl + 10), ("kl", None))}
    path.write_text(json.dumps({"config": {"model": model, "dataset": dataset, "seed": seed,
                                           "model_args": {"begin_layer": begin, "end_layer": end, **args},
                                           "backbone": {"n_layer": 4}}, "metrics": metrics}))
    return path


def test_runs_fall_into_the_start_and_end_series_by_their_latent_layer_count(tmp_path):
    paths = [write_eval(tmp_path, "all", 0, None, 10.0), write_eval(tmp_path, "all", 0, 3, 12.0, seed=1),
             write_eval(tmp_path, "start3", 2, None, 20.0), write_eval(tmp_path, "end1", 0, 0, 30.0)]
    points = sweep_points(paths)
    assert points == {"start layer i": {2: {"iw_ppl": 20.0, "neg_elbo": 30.0}, 4: {"iw_ppl": 11.0, "neg_elbo": 21.0}},
                      "end layer j": {1: {"iw_ppl": 30.0, "neg_elbo": 40.0}, 4: {"iw_ppl": 11.0, "neg_elbo": 21.0}}}
    out = tmp_path / "fig2.svg"
    main(["layer-sweep", "--evals", *map(str, paths), "--out", str(out)])
    assert out.read_text().startswith("<?xml") and "latent layers" in out.read_text()


@pytest.mark.parametrize("begin, end, model, message", [
    (1, 2, "della", "start after the first and end before the last layer"),
    (0, None, "embed", "not a DELLA run with a layer range"),
    (3, 2, "della", "not a DELLA run with a layer range"),
    (0, 4, "della", "not a DELLA run with a layer range"),  # layers 0..3 only
])
def test_runs_outside_both_series_are_refused_naming_the_file(tmp_path, begin, end, model, message):
    path = write_eval(tmp_path, "x", begin, end, 1.0, model=model)
    with pytest.raises(ValueError, match=message) as err:
        sweep_points([path])
    assert str(path) in str(err.value)


@pytest.mark.parametrize("begin, end", [(0, None), (0, 0), (0, 1), (1, None), (1, 1)])
def test_the_latent_layer_count_is_the_models(begin, end):
    """The figure's x is how many layers the model itself fuses a latent into."""
    from della.layer_sweep import latent_range
    from tests.conftest import tiny_model

    model = tiny_model("della", begin_layer=begin, end_layer=end)
    config = {"model": "della", "model_args": {"begin_layer": begin, "end_layer": end},
              "backbone": {"n_layer": model.backbone.n_layer}}
    first, stop, _ = latent_range(config, "x")
    assert list(range(first, stop)) == list(model.latent_layers)


@pytest.mark.parametrize("other, differ", [(dict(dataset="e"), "dataset"), (dict(pool="attention"), "model_args")])
def test_runs_of_another_dataset_or_recipe_are_refused_naming_both_files(tmp_path, other, differ):
    """Averaging them into one point would mix unrelated models (e.g. della and della-official)."""
    args = {k: v for k, v in other.items() if k != "dataset"}
    first = write_eval(tmp_path, "all", 0, None, 10.0)
    second = write_eval(tmp_path, "start3", 2, None, 20.0, dataset=other.get("dataset", "d"), **args)
    with pytest.raises(ValueError, match=f"its {differ} differ from those of") as err:
        sweep_points([first, second])
    assert str(first) in str(err.value) and str(second) in str(err.value)


def test_an_eval_json_without_a_panel_metric_is_named(tmp_path):
    path = write_eval(tmp_path, "all", 0, None, 10.0)
    doc = json.loads(path.read_text())
    del doc["metrics"]["neg_elbo"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=f"{path}: no metric 'neg_elbo'"):
        sweep_points([path])
