"""`python -m della layer-sweep`: the paper's Fig. 2, PPL, −ELBO and KL against the number of latent layers.

DELLA runs that differ only in `begin_layer` / `end_layer` form two series, as in the paper: "start
layer i" (latents from layer i to the last) and "end layer j" (latents from the first layer to layer
j); the run with every layer belongs to both. Each point is the mean over the seeds of its eval.json
files; a run whose range is neither (latents strictly inside the stack) is an error, since the
figure has no series for it.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from collections import defaultdict
from pathlib import Path

from della.io import read_json
from della.report import save_figure

log = logging.getLogger(__name__)
PANELS = (("iw_ppl", "PPL"), ("neg_elbo", "−ELBO (nats)"), ("kl", "KL (nats)"))


SWEPT = ("begin_layer", "end_layer")  # what may differ between the runs of one figure


def latent_range(config: dict, where: str) -> tuple[int, int, int]:
    """(first latent layer, one past the last, layers in the backbone) of a DELLA run config;
    `end_layer` counts from 0 and is the last latent layer itself (DellaConfig)."""
    args, n_layer = config["model_args"], config["backbone"]["n_layer"]
    begin, last = args.get("begin_layer", 0), args.get("end_layer")
    end = n_layer if last is None else last + 1
    if config["model"] != "della" or not 0 <= begin < end <= n_layer:
        raise ValueError(f"{where}: not a DELLA run with a layer range (model {config['model']!r}, "
                         f"begin_layer {begin}, end_layer {last}, {n_layer} layers)")
    return begin, end, n_layer


def sweep_recipe(config: dict) -> dict:
    """What the runs of one figure share: the dataset and the whole recipe but the layer range."""
    return {"dataset": config.get("dataset"), "model_args": {k: v for k, v in config["model_args"].items()
                                                             if k not in SWEPT},
            **{key: config.get(key) for key in ("task", "backbone", "train", "evaluate")}}


def sweep_points(paths: list[Path]) -> dict[str, dict[int, dict[str, float]]]:
    """series ("start layer i" | "end layer j") -> number of latent layers -> metric -> mean over seeds."""
    values: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    first: tuple[Path, dict] | None = None
    for path in paths:
        doc = read_json(path)
        recipe = sweep_recipe(doc["config"])
        first = first or (path, recipe)
        if recipe != first[1]:
            differ = sorted(key for key in recipe if recipe[key] != first[1][key])
            raise ValueError(f"{path}: its {', '.join(differ)} differ from those of {first[0]}; Fig. 2 compares "
                             f"DELLA runs of one dataset and recipe that differ only in {' / '.join(SWEPT)}")
        begin, end, n_layer = latent_range(doc["config"], str(path))
        series = [s for s, inside in (("start layer i", end == n_layer), ("end layer j", begin == 0)) if inside]
        if not series:
            raise ValueError(f"{path}: latents in layers {begin}..{end - 1} of {n_layer} start after the first "
                             "and end before the last layer; Fig. 2 has no series for such a range")
        for key, _ in PANELS:
            if key not in doc["metrics"]:
                raise ValueError(f"{path}: no metric {key!r} (an eval.json of `python -m della evaluate`?)")
            value = doc["metrics"][key]["value"]
            for s in series:
                if value is not None:
                    values[s, end - begin][key].append(value)
    out: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for (s, count), metrics in sorted(values.items()):
        out[s][count] = {key: statistics.fmean(v) for key, v in metrics.items()}
    return dict(out)


def plot_sweep(points: dict[str, dict[int, dict[str, float]]], title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.4), layout="constrained")
    for ax, (key, label) in zip(fig.subplots(1, len(PANELS)), PANELS):
        for series, marker in (("start layer i", "o-"), ("end layer j", "s--")):
            xs = sorted(n for n, m in points.get(series, {}).items() if key in m)
            ax.plot(xs, [points[series][n][key] for n in xs], marker, ms=4, label=series)
        ax.set_xlabel("latent layers")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.splitlines()[0]
    p.add_argument("--evals", nargs="+", required=True, help="eval.json files of DELLA runs with layer ranges")
    p.add_argument("--title", default="Number of latent layers (Fig. 2)")
    p.add_argument("--out", required=True, help="figure (.svg, .png or .pdf)")


def run(args: argparse.Namespace) -> None:
    points = sweep_points([Path(p) for p in args.evals])
    save_figure(plot_sweep(points, args.title), args.out)
    log.info("%s -> %s", {s: sorted(v) for s, v in points.items()}, args.out)
