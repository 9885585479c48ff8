"""Figures and pages for the Snakemake report: `curves`, `samples-page`, `provenance`.

- `python -m della curves`: the learning curves of one run from its `train-log.jsonl` (the paper's
  Fig. 5): reconstruction CE per step (train) and per epoch (valid), the KL of every latent group
  (for DELLA, group l is the latent of the l-th injected layer), and β; the LM (no latent) has the
  CE panel only.
- `python -m della samples-page`: the first generated samples of a run, with the generation
  settings of its `samples.json`, as one HTML page.
- `python -m della provenance`: config, seed, versions, git commit and device of every run, from
  the `run.json` files, as one HTML page; those of each process that trained it where a resume
  changed them.

Every output is written atomically. The figures are drawn on a bare matplotlib `Figure` (Agg for
PNG, the SVG backend for SVG), so no display or pyplot state is involved.
"""

from __future__ import annotations

import argparse
import html
import logging
from pathlib import Path
from typing import Any

import yaml

from della.cost import ACROSS_PROCESSES, device_text, over_processes
from della.io import atomic_write, atomic_write_text, read_json, read_jsonl
from della.tables import html_document, run_path_parts

log = logging.getLogger(__name__)

PAGE_STYLE = ("body{font-family:sans-serif;font-size:14px}table{border-collapse:collapse;margin:6px 0}"
              "th,td{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}"
              "pre{background:#f6f6f6;padding:6px}ol li{margin:2px 0}.differs{background:#fde8c8}"
              "td.name{white-space:nowrap}")  # model names such as della-official stay on one line


def html_page(title: str, body: list[str]) -> str:
    return html_document(title, PAGE_STYLE, [f"<h2>{html.escape(title)}</h2>", *body])


def kv_table(items: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in items.items())
    return f"<table>{rows}</table>"


def read_object(path: Path) -> dict[str, Any]:
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return doc


# ---------------------------------------------------------------------------------------------
# curves


TRAIN_LOG_KEYS = ("ce", "beta")  # what the curves read of every train step


def read_train_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a train-log.jsonl (one JSON object per line, `split` train or valid)."""
    records = read_jsonl(path)
    for n, rec in enumerate(records, start=1):
        if not isinstance(rec, dict) or "step" not in rec or rec.get("split") not in ("train", "valid"):
            raise ValueError(f"{path}: record {n}: expected an object with 'split' (train|valid) and 'step'")
        missing = [key for key in TRAIN_LOG_KEYS if rec["split"] == "train" and key not in rec]
        if missing:
            raise ValueError(f"{path}: record {n}: a train step without {missing}")
    if not any(r["split"] == "train" for r in records):
        raise ValueError(f"{path}: no training step logged")
    return records


MAX_POINTS = 1000  # per curve: longer logs are averaged over bins of consecutive steps


def binned(values: list[float], size: int) -> list[float]:
    """Means of consecutive bins of `size` values (the last bin may be shorter)."""
    return [sum(chunk) / len(chunk) for chunk in (values[i:i + size] for i in range(0, len(values), size))]


def plot_learning_curves(records: list[dict[str, Any]], title: str, max_points: int = MAX_POINTS):
    """A matplotlib Figure over optimizer steps: CE, then for a latent model the KL of every group and
    β (one panel each); a model without a latent (the LM) has no KL and no β, so only the CE panel."""
    from matplotlib.figure import Figure

    train = [r for r in records if r["split"] == "train"]
    size = -(-len(train) // max_points)  # steps per plotted point
    steps = binned([r["step"] for r in train], size)
    n_groups = max((len(r.get("kl_groups") or []) for r in train), default=0)
    if n_groups:
        fig = Figure(figsize=(7.5, 7), layout="constrained")
        ax_ce, ax_kl, ax_beta = fig.subplots(3, 1, sharex=True, height_ratios=[2, 2, 1])
        plot_kl(ax_kl, train, steps, size, n_groups)
        ax_beta.plot(steps, binned([r["beta"] for r in train], size), lw=0.8, color="black")
        ax_beta.set_ylabel("β")
        ax_beta.set_xlabel("optimizer step")
    else:
        fig = Figure(figsize=(7.5, 3.5), layout="constrained")
        ax_ce = fig.subplots()
        ax_ce.set_xlabel("optimizer step (no latent variable: no KL, no β)")
    fig.suptitle(title)
    plot_ce(ax_ce, records, train, steps, size)
    return fig


def plot_ce(ax, records, train, steps, size) -> None:
    valid = [r for r in records if r["split"] == "valid" and "ce" in r]
    ax.plot(steps, binned([r["ce"] for r in train], size), lw=0.8,
            label="train" if size == 1 else f"train (mean of {size} steps)")
    if valid:
        ax.plot([r["step"] for r in valid], [r["ce"] for r in valid], "o-", ms=4, label="valid (epoch end)")
    ax.set_ylabel("reconstruction CE\n(nats / sentence)")
    ax.legend(fontsize=8)


def plot_kl(ax, train, steps, size, n_groups) -> None:
    for g in range(n_groups):
        kl = [(r.get("kl_groups") or [float("nan")] * n_groups)[g] for r in train]
        ax.plot(steps, binned(kl, size), lw=0.8, label=f"KL $z_{{{g + 1}}}$")
    ax.legend(fontsize=8, ncols=min(n_groups, 4))
    ax.set_ylabel("KL per group\n(nats / sentence)")


def save_figure(fig, out: str | Path) -> None:
    """PNG, SVG or PDF by the suffix of `out`; SVG and PDF byte-reproducible (no date, fixed ids)."""
    out = Path(out)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in ("png", "svg", "pdf"):
        raise ValueError(f"--out {out}: expected a .png, .svg or .pdf file")
    import matplotlib

    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt, {})
    with matplotlib.rc_context({"svg.hashsalt": "della-bench"}):  # else SVG ids are random per save
        atomic_write(out, lambda tmp: fig.savefig(tmp, format=fmt, metadata=metadata, dpi=110))


def add_curves_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "learning curves of a run (CE, KL per latent group, β) from its train-log.jsonl"
    p.add_argument("--train-log", required=True, help="results/<experiment>/runs/<dataset>/<model>/seed<N>/train-log.jsonl")
    p.add_argument("--title", default=None, help="figure title (default: the run directory)")
    p.add_argument("--out", required=True, help="figure file: .svg, .png or .pdf")


def run_curves(args: argparse.Namespace) -> None:
    records = read_train_log(args.train_log)
    save_figure(plot_learning_curves(records, args.title or str(Path(args.train_log).parent)), args.out)
    log.info("%d log records -> %s", len(records), args.out)


# ---------------------------------------------------------------------------------------------
# samples-page


def samples_page(samples: Path, first: int, title: str) -> str:
    """HTML: the generation settings (samples.json beside samples.txt) and the first samples."""
    if not samples.is_file():
        raise FileNotFoundError(f"{samples}: no such file")
    texts = samples.read_text(encoding="utf-8").splitlines()
    meta = read_object(samples.with_suffix(".json"))
    settings = {**meta.get("settings", {}), "seed": meta.get("seed"), "samples": meta.get("n", len(texts)),
                "empty samples": meta.get("empty")}
    prov = meta.get("provenance") or {}
    shown = texts[:first]
    body = ["<h3>Generation settings</h3>", kv_table(settings),
            f"<p>generated on {html.escape(device_text(prov))} at commit "
            f"{html.escape(str(prov.get('git_commit')))} ({html.escape(str(prov.get('time')))})</p>",
            f"<h3>The first {len(shown)} of {len(texts)} samples</h3>",
            "<ol>" + "".join(f"<li>{html.escape(t) if t else '<i>(empty)</i>'}</li>" for t in shown) + "</ol>"]
    return html_page(title, body)


def add_samples_page_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "an HTML page with the first generated samples of a run and their settings"
    p.add_argument("--samples", required=True, help="samples.txt of `della generate` (samples.json beside it)")
    p.add_argument("--first", type=int, default=50, help="how many samples to show (default 50)")
    p.add_argument("--title", default=None, help="page title (default: the run directory)")
    p.add_argument("--out", required=True, help="HTML file")


def run_samples_page(args: argparse.Namespace) -> None:
    if args.first < 1:
        raise ValueError(f"--first {args.first}: expected at least 1")
    samples = Path(args.samples)
    atomic_write_text(args.out, samples_page(samples, args.first, args.title or f"Samples: {samples.parent}"))
    log.info("%s -> %s", samples, args.out)


# ---------------------------------------------------------------------------------------------
# provenance

def version(package: str):
    return lambda prov: (prov.get("versions") or {}).get(package)


# Columns of each process's provenance: a run resumed on another machine or commit shows "A → B" there.
PROCESS_COLUMNS = {"git commit": lambda prov: prov.get("git_commit"), "device": device_text,
                   "world size": lambda prov: prov.get("world_size"), "python": version("python"),
                   "torch": version("torch"), "transformers": version("transformers")}
PROVENANCE_COLUMNS = [*PROCESS_COLUMNS, "trained at", "steps", "parameters"]


def provenance_row(doc: dict[str, Any]) -> dict[str, Any]:
    return {**{column: over_processes(doc, describe) for column, describe in PROCESS_COLUMNS.items()},
            "trained at": (doc.get("provenance") or {}).get("time"), "steps": doc.get("steps"),
            "parameters": doc.get("parameters")}


def provenance_page(paths: list[Path]) -> str:
    """HTML: one summary row per run (cells that differ between runs are highlighted), then the
    full config and provenance of each run."""
    runs = []
    for path in paths:
        doc = read_object(path)
        if doc.get("kind") != "run":
            raise ValueError(f"{path}: not a run.json (kind {doc.get('kind')!r})")
        runs.append((run_path_parts(path), path, doc))
    rows = [provenance_row(doc) for _, _, doc in runs]
    differs = {c for c in PROCESS_COLUMNS if len({str(r[c]) for r in rows}) > 1}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["dataset", "model", "seed", *PROVENANCE_COLUMNS])
    lines = []
    for ((dataset, model, seed), _, _), row in zip(runs, rows):
        cells = [dataset, model, seed] + [row[c] for c in PROVENANCE_COLUMNS]
        mixed = {c for c in PROCESS_COLUMNS if ACROSS_PROCESSES in str(row[c])}  # within the run
        classes = [' class="name"'] * 3 + [' class="differs"' if c in differs | mixed else "" for c in PROVENANCE_COLUMNS]
        lines.append("<tr>" + "".join(f"<td{k}>{html.escape(str(v))}</td>" for k, v in zip(classes, cells))
                     + "</tr>")
    body = [f"<p>{len(runs)} run(s). Highlighted columns differ between runs"
            f"{': ' + ', '.join(sorted(differs)) if differs else ' (none do)'}; a highlighted \"A{ACROSS_PROCESSES}B\" "
            f"is a run whose training was resumed on another commit, machine or version.</p>",
            f"<table><tr>{head}</tr>{''.join(lines)}</table>", "<h3>Every run</h3>"]
    for (dataset, model, seed), path, doc in runs:
        details = {"seed": doc.get("seed"), "provenance": doc.get("provenance"), "processes": doc.get("processes"),
                   "config": doc.get("config")}
        body.append(f"<details><summary>{html.escape(f'{dataset} / {model} / seed {seed}')} "
                    f"({html.escape(str(path))})</summary>"
                    f"<pre>{html.escape(yaml.safe_dump(details, sort_keys=False))}</pre></details>")
    return html_page("Provenance of every run", body)


def add_provenance_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "an HTML page with the config, seed, versions, git commit and device of every run"
    p.add_argument("--runs", nargs="+", required=True, help="results/<experiment>/runs/<dataset>/<model>/seed<N>/run.json files")
    p.add_argument("--out", required=True, help="HTML file")


def run_provenance(args: argparse.Namespace) -> None:
    atomic_write_text(args.out, provenance_page([Path(p) for p in args.runs]))
    log.info("%d run(s) -> %s", len(args.runs), args.out)
