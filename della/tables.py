"""`python -m della aggregate` and `python -m della table`: results JSON -> long CSV -> paper tables.

`aggregate` reads the per-run JSON files (`eval.json` from `della evaluate`, `metrics.json` from
`python -m metrics compute`), all shaped as

    {"kind": ..., "metrics": {"<key>": {"value": float | null, "higher_is_better": bool,
                                         "label": "PPL", "display_scale": 1, "decimals": 2,
                                         "signature": "...", ...}}}

and writes one row per (dataset, model, seed, metric) to a long CSV (SUMMARY_COLUMNS). The
dataset, model and seed come from the path `.../runs/{dataset}/{model}/seed{seed}/<file>.json`.

`table` renders one paper table from that CSV as LaTeX (booktabs), CSV and Markdown. Everything
about a metric (label, direction, scale, decimals, recipe signature) comes from the CSV, that is
from the metric registries; this module only knows which metric keys each table shows. A missing
or null value is shown as "–", never filled in.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from della.io import atomic_write_text

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["dataset", "model", "seed", "metric", "value", "label", "higher_is_better",
                   "display_scale", "decimals", "signature", "source"]
MISSING = "–"

# Table name -> column groups (group title, metric keys), in the paper's order.
TABLES: dict[str, list[tuple[str, list[str]]]] = {
    "table1": [("Representation", ["iw_ppl", "neg_elbo", "kl", "mi", "au"]),
               ("Generation", ["bleu", "cnd", "mauve", "self_bleu", "dist", "js"])],
}

# ---------------------------------------------------------------------------------------------
# aggregate


def run_path_parts(path: Path) -> tuple[str, str, int]:
    """(dataset, model, seed) from `.../runs/{dataset}/{model}/seed{seed}/<file>.json`."""
    parts = path.parts
    if len(parts) < 5 or parts[-5] != "runs" or not parts[-2].startswith("seed") \
            or not parts[-2][4:].isdigit():
        raise ValueError(f"{path}: not a run file; expected .../runs/<dataset>/<model>/seed<N>/<file>.json")
    return parts[-4], parts[-3], int(parts[-2][4:])


def _entry_rows(path: Path, key: str, entry: Any) -> dict[str, Any]:
    where = f"{path}: metrics.{key}"
    if not isinstance(entry, dict) or "value" not in entry:
        raise ValueError(f"{where}: expected an object with a 'value'")
    value = entry["value"]
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{where}.value: expected a number or null, got {value!r}")
    if value is not None and not math.isfinite(value):
        value = None
    hib = entry.get("higher_is_better")
    if not isinstance(hib, bool):
        raise ValueError(f"{where}.higher_is_better: expected true or false, got {hib!r}")
    scale, decimals = entry.get("display_scale", 1), entry.get("decimals", 2)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
        raise ValueError(f"{where}.display_scale: expected a positive number, got {scale!r}")
    if isinstance(decimals, bool) or not isinstance(decimals, int) or decimals < 0:
        raise ValueError(f"{where}.decimals: expected an integer >= 0, got {decimals!r}")
    if value is None:
        log.warning("%s: no value (%s)", where, entry.get("error", "no error given"))
    return {"metric": key, "value": value, "label": str(entry.get("label") or key),
            "higher_is_better": hib, "display_scale": scale, "decimals": decimals,
            "signature": str(entry.get("signature") or "")}


def collect(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Summary rows from results JSON files, in input order; duplicate metrics are an error."""
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, str, int, str], str] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        dataset, model, seed = run_path_parts(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from None
        metrics = doc.get("metrics") if isinstance(doc, dict) else None
        if metrics is None:
            log.warning("%s: no 'metrics' object; nothing to aggregate", path)
            continue
        if not isinstance(metrics, dict):
            raise ValueError(f"{path}: 'metrics' must be an object")
        for key, entry in metrics.items():
            ident = (dataset, model, seed, key)
            if ident in seen:
                raise ValueError(f"{path}: metric {key!r} of {dataset}/{model}/seed{seed} "
                                 f"is also in {seen[ident]}")
            seen[ident] = str(path)
            rows.append({"dataset": dataset, "model": model, "seed": seed,
                         **_entry_rows(path, key, entry), "source": str(path)})
    return rows


def summary_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "value": "" if row["value"] is None else repr(float(row["value"])),
                         "higher_is_better": "true" if row["higher_is_better"] else "false"})
    return buf.getvalue()


def add_aggregate_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "collect eval.json/metrics.json files into one long CSV"
    p.add_argument("--inputs", nargs="+", required=True,
                   help="results/runs/<dataset>/<model>/seed<N>/<file>.json files")
    p.add_argument("--out", required=True, help="output CSV, e.g. results/summary.csv")


def run_aggregate(args: argparse.Namespace) -> None:
    rows = collect(args.inputs)
    atomic_write_text(args.out, summary_csv(rows))
    log.info("%d rows from %d files -> %s", len(rows), len(args.inputs), args.out)


# ---------------------------------------------------------------------------------------------
# table


@dataclass(frozen=True)
class MetricInfo:
    key: str
    label: str
    higher_is_better: bool | None  # None: the metric is in no row, so its direction is unknown
    display_scale: float
    decimals: int


@dataclass
class Cell:
    values: list[float]  # in display scale, one per seed that has a value
    n_seeds: int  # seeds of this (dataset, model) in the summary
    bold: bool = False

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def partial(self) -> bool:
        return 0 < len(self.values) < self.n_seeds


def read_summary(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a summary CSV written by `aggregate`, with values parsed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in SUMMARY_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append({**row, "seed": int(row["seed"]),
                             "value": float(row["value"]) if row["value"] != "" else None,
                             "higher_is_better": {"true": True, "false": False}[row["higher_is_better"].lower()],
                             "display_scale": float(row["display_scale"]),
                             "decimals": int(row["decimals"])})
            except (ValueError, KeyError) as err:
                raise ValueError(f"{path}:{line}: bad value ({err})") from None
    return rows


def metric_infos(rows: list[dict[str, Any]], keys: list[str]) -> dict[str, MetricInfo]:
    """Display settings per metric key; rows with a value must agree on them.

    A null entry (e.g. MI of a model without a latent) only supplies them when no row has a value.
    """
    infos: dict[str, MetricInfo] = {}
    for key in keys:
        of_key = [r for r in rows if r["metric"] == key]
        of_key = [r for r in of_key if r["value"] is not None] or of_key
        found = {(r["label"], r["higher_is_better"], r["display_scale"], r["decimals"]) for r in of_key}
        if len(found) > 1:
            raise ValueError(f"summary: metric {key!r} has conflicting label/direction/scale/decimals: "
                             f"{sorted(found, key=str)}")
        label, hib, scale, decimals = found.pop() if found else (key, None, 1.0, 2)
        infos[key] = MetricInfo(key, label, hib, scale, decimals)
    return infos


def _order(requested: str | None, rows: list[dict[str, Any]], column: str) -> list[str]:
    if requested:
        return [x.strip() for x in requested.split(",") if x.strip()]
    return list(dict.fromkeys(r[column] for r in rows))


def build_cells(rows: list[dict[str, Any]], datasets: list[str], models: list[str],
                infos: dict[str, MetricInfo]) -> dict[tuple[str, str, str], Cell]:
    """Cell per (dataset, model, metric), with bold marking the best mean of each dataset block."""
    seeds: dict[tuple[str, str], set[int]] = {}
    for r in rows:
        seeds.setdefault((r["dataset"], r["model"]), set()).add(r["seed"])
    cells = {(d, m, k): Cell([], len(seeds.get((d, m), ())))
             for d in datasets for m in models for k in infos}
    for r in rows:
        cell = cells.get((r["dataset"], r["model"], r["metric"]))
        if cell is not None and r["value"] is not None:
            cell.values.append(r["value"] * r["display_scale"])
    for d in datasets:
        for key, info in infos.items():
            block = [cells[d, m, key] for m in models if cells[d, m, key].values]
            if len(block) < 2 or info.higher_is_better is None:
                continue
            shown = [round(c.mean, info.decimals) for c in block]  # compare at display precision
            best = max(shown) if info.higher_is_better else min(shown)
            for c, s in zip(block, shown):
                c.bold = s == best
    return cells


@dataclass(frozen=True)
class CellStyle:
    """How one output format writes a cell: ±, bold, the partial-seeds mark, a missing value."""

    pm: str
    bold: str  # a format string around the number
    partial: str
    missing: str


LATEX = CellStyle(r"$\pm$", r"\textbf{{{}}}", r"$^\dagger$", "--")
MARKDOWN = CellStyle(" ± ", "**{}**", " †", MISSING)


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
                  "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


@dataclass
class Rendering:
    """Everything the three output formats share."""

    name: str
    groups: list[tuple[str, list[str]]]
    datasets: list[str]
    models: list[str]
    infos: dict[str, MetricInfo]
    cells: dict[tuple[str, str, str], Cell]
    notes: dict[str, str]  # metric key -> footnote mark ("a", "b", ...)
    note_texts: list[tuple[str, str]]  # (mark, text)

    @property
    def keys(self) -> list[str]:
        return [k for _, keys in self.groups for k in keys]

    def arrow(self, key: str, up: str, down: str) -> str:
        hib = self.infos[key].higher_is_better
        return "" if hib is None else (up if hib else down)

    def any_partial(self) -> bool:
        return any(c.partial for c in self.cells.values())

    def cell_text(self, dataset: str, model: str, key: str, style: CellStyle) -> str:
        """Mean (± std over seeds) at the metric's decimals; bold if best; `missing` if no value."""
        cell, decimals = self.cells[dataset, model, key], self.infos[key].decimals
        if cell.mean is None:
            return style.missing
        text = f"{cell.mean:.{decimals}f}"
        if cell.std is not None:
            text += f"{style.pm}{cell.std:.{decimals}f}"
        return (style.bold.format(text) if cell.bold else text) + (style.partial if cell.partial else "")


PARTIAL_NOTE = "mean over the seeds that have a value (fewer than the seeds run)"


def prepare_rendering(rows: list[dict[str, Any]], table: str, datasets: list[str],
                      models: list[str]) -> Rendering:
    groups = TABLES[table]
    keys = [k for _, ks in groups for k in ks]
    unknown = [d for d in datasets if not any(r["dataset"] == d for r in rows)]
    if unknown:
        raise ValueError(f"--datasets: no rows for {unknown} in the summary")
    rows = [r for r in rows if r["dataset"] in datasets and r["model"] in models]
    infos = metric_infos(rows, keys)
    cells = build_cells(rows, datasets, models, infos)
    notes: dict[str, str] = {}
    note_texts: list[tuple[str, str]] = []
    for key in keys:
        sigs = list(dict.fromkeys(r["signature"] for r in rows
                                  if r["metric"] == key and r["signature"]))
        if sigs:
            mark = "abcdefghijklmnopqrstuvwxyz"[len(notes) % 26]
            notes[key] = mark
            note_texts.append((mark, f"{infos[key].label}: {'; '.join(sigs)}"))
    return Rendering(table, groups, datasets, models, infos, cells, notes, note_texts)


def render_latex(r: Rendering) -> str:
    out = [f"% {r.name}: generated by `python -m della table`; do not edit by hand.",
           "% needs \\usepackage{booktabs}",
           f"\\begin{{tabular}}{{ll{'r' * len(r.keys)}}}", r"\toprule"]
    spans, rules, col = [" & "], [], 3
    for title, keys in r.groups:
        spans.append(f"\\multicolumn{{{len(keys)}}}{{c}}{{{latex_escape(title)}}}")
        rules.append(f"\\cmidrule(lr){{{col}-{col + len(keys) - 1}}}")
        col += len(keys)
    out += [" & ".join(spans) + r" \\", " ".join(rules)]
    heads = ["Dataset", "Model"]
    for k in r.keys:
        mark = f"$^{{{r.notes[k]}}}$" if k in r.notes else ""
        heads.append(latex_escape(r.infos[k].label) + r.arrow(k, r"$\uparrow$", r"$\downarrow$") + mark)
    out += [" & ".join(heads) + r" \\", r"\midrule"]
    for i, d in enumerate(r.datasets):
        if i:
            out.append(r"\midrule")
        for j, m in enumerate(r.models):
            line = [latex_escape(d) if j == 0 else "", latex_escape(m)]
            line += [r.cell_text(d, m, k, LATEX) for k in r.keys]
            out.append(" & ".join(line) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    notes = [f"$^{{{mark}}}$~{latex_escape(text)}" for mark, text in r.note_texts]
    if r.any_partial():
        notes.append(rf"$^\dagger$~{latex_escape(PARTIAL_NOTE)}")
    if notes:
        out.append("{\\footnotesize\\par\\smallskip " + " \\par\n".join(notes) + "\\par}")
    return "\n".join(out) + "\n"


def render_markdown(r: Rendering) -> str:
    heads = ["Dataset", "Model"] + [
        f"{r.infos[k].label} {r.arrow(k, '↑', '↓')}".strip() + (f" ({r.notes[k]})" if k in r.notes else "")
        for k in r.keys]
    out = ["| " + " | ".join(heads) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * len(r.keys)) + "|"]
    for d in r.datasets:
        for m in r.models:
            line = [d, m] + [r.cell_text(d, m, k, MARKDOWN) for k in r.keys]
            out.append("| " + " | ".join(line) + " |")
    notes = [f"({mark}) {text}" for mark, text in r.note_texts]
    if r.any_partial():
        notes.append(f"† {PARTIAL_NOTE}")
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def render_csv(r: Rendering) -> str:
    """Numbers at display scale (not rounded): mean and std per metric; empty when missing."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "model", "seeds"] + [c for k in r.keys for c in (k, f"{k}_std", f"{k}_n")])
    for d in r.datasets:
        for m in r.models:
            line: list[Any] = [d, m, r.cells[d, m, r.keys[0]].n_seeds]
            for k in r.keys:
                c = r.cells[d, m, k]
                line += ["" if c.mean is None else repr(c.mean), "" if c.std is None else repr(c.std),
                         len(c.values)]
            writer.writerow(line)
    return buf.getvalue()


def add_table_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "render a paper table from the summary CSV as .tex, .csv and .md"
    p.add_argument("--summary", required=True, help="CSV written by `python -m della aggregate`")
    p.add_argument("--table", required=True, choices=sorted(TABLES))
    p.add_argument("--datasets", default=None, help="comma-separated, in order (default: as in the summary)")
    p.add_argument("--models", default=None, help="comma-separated row order (default: as in the summary)")
    p.add_argument("--out-prefix", required=True, help="e.g. results/tables/table1 -> table1.{tex,csv,md}")


def run_table(args: argparse.Namespace) -> None:
    rows = read_summary(args.summary)
    r = prepare_rendering(rows, args.table, _order(args.datasets, rows, "dataset"),
                          _order(args.models, rows, "model"))
    for ext, text in (("tex", render_latex(r)), ("csv", render_csv(r)), ("md", render_markdown(r))):
        atomic_write_text(f"{args.out_prefix}.{ext}", text)
    log.info("%s: %d dataset(s) x %d model(s) -> %s.{tex,csv,md}", args.table, len(r.datasets),
             len(r.models), args.out_prefix)
