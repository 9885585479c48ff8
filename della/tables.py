"""`python -m della aggregate` and `python -m della table`: results JSON -> long CSV -> paper tables.

`aggregate` reads the per-run JSON files (`eval.json` from `della evaluate`, `metrics.json` from
`python -m metrics compute`), all shaped as

    {"kind": ..., "metrics": {"<key>": {"value": float | null, "higher_is_better": bool,
                                         "label": "PPL", "display_scale": 1, "decimals": 2,
                                         "signature": "...", ...}}}

and writes one row per (dataset, model, seed, metric) to a long CSV (SUMMARY_COLUMNS). The
dataset, model and seed come from the path `.../runs/{dataset}/{model}/seed{seed}/<file>.json`.
It reads the training cost the same way: a `run.json` (`"kind": "run"`) and a Snakemake benchmark
record `.../benchmarks/{rule}/{dataset}/{model}/seed{seed}.jsonl` become entries of that shape in
`della.cost`, which declares their labels and directions. An entry may be text instead of a
number (`{"text": "cpu (x86_64, 1 thread)", "label": "Device"}`): it has no direction.

`table` renders one paper table from that CSV as LaTeX (booktabs), CSV, Markdown and HTML (for the
Snakemake report). Everything about a metric (label, direction, scale, decimals, recipe signature)
comes from the CSV, that is from the metric registries; this module only knows which metric keys
each table shows. A missing or null value is shown as "–", never filled in.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from della import cost
from della.io import atomic_write_text, read_json

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["dataset", "model", "seed", "metric", "value", "text", "label", "higher_is_better",
                   "display_scale", "decimals", "signature", "source"]
OPTIONAL_COLUMNS = {"text": ""}  # absent from summaries written before text entries existed
MISSING = "–"

# Table name -> column groups (group title, metric keys), in the paper's order.
TABLES: dict[str, list[tuple[str, list[str]]]] = {
    "table1": [("Representation", ["iw_ppl", "neg_elbo", "kl", "mi", "au"]),
               ("Generation", ["bleu", "cnd", "mauve", "self_bleu", "dist", "js"])],
    # the cost of training every model (the paper's Table 6 has DELLA only); keys of della.cost
    "cost": [("Training", ["train_wall_seconds", "train_seconds", "tokens_per_second", "train_max_rss_mb",
                           "cuda_max_allocated_mb"]),
             ("Setup", ["parameters", "device"])],
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


def benchmark_path_parts(path: Path) -> tuple[str, str, str, int]:
    """(rule, dataset, model, seed) from `.../benchmarks/{rule}/{dataset}/{model}/seed{seed}.jsonl`."""
    parts = path.parts
    if len(parts) < 5 or parts[-5] != "benchmarks" or not path.stem.startswith("seed") \
            or not path.stem[4:].isdigit():
        raise ValueError(f"{path}: not a benchmark file; expected "
                         ".../benchmarks/<rule>/<dataset>/<model>/seed<N>.jsonl")
    return parts[-4], parts[-3], parts[-2], int(path.stem[4:])


def load_entries(path: Path) -> tuple[tuple[str, str, int], dict[str, Any] | None]:
    """((dataset, model, seed), metric entries) of one results file; None when it has no metrics."""
    if path.suffix == ".jsonl":
        rule, *ident = benchmark_path_parts(path)
        return tuple(ident), cost.benchmark_metrics(path, rule)
    ident = run_path_parts(path)
    doc = read_json(path)
    if isinstance(doc, dict) and doc.get("kind") == "run":
        return ident, cost.run_metrics(doc, str(path))
    return ident, doc.get("metrics") if isinstance(doc, dict) else None


def _entry_rows(path: Path, key: str, entry: Any) -> dict[str, Any]:
    where = f"{path}: metrics.{key}"
    if isinstance(entry, dict) and "text" in entry:  # a description (e.g. the device): no number, no direction
        if not isinstance(entry["text"], str):
            raise ValueError(f"{where}.text: expected a string, got {entry['text']!r}")
        return {"metric": key, "value": None, "text": entry["text"], "label": str(entry.get("label") or key),
                "higher_is_better": None, "display_scale": 1, "decimals": 0,
                "signature": str(entry.get("signature") or "")}
    if not isinstance(entry, dict) or "value" not in entry:
        raise ValueError(f"{where}: expected an object with a 'value' (or a 'text')")
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
    return {"metric": key, "value": value, "text": "", "label": str(entry.get("label") or key),
            "higher_is_better": hib, "display_scale": scale, "decimals": decimals,
            "signature": str(entry.get("signature") or "")}


def collect(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Summary rows from results files (JSON, benchmark JSONL), in input order; duplicates are an error."""
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, str, int, str], str] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        (dataset, model, seed), metrics = load_entries(path)
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
        hib = row["higher_is_better"]
        writer.writerow({**row, "value": "" if row["value"] is None else repr(float(row["value"])),
                         "higher_is_better": "" if hib is None else "true" if hib else "false"})
    return buf.getvalue()


def add_aggregate_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "collect eval.json/metrics.json (or run.json and benchmark JSONL) files into one long CSV"
    p.add_argument("--inputs", nargs="+", required=True,
                   help="results/runs/<dataset>/<model>/seed<N>/<file>.json files, "
                        "results/benchmarks/<rule>/<dataset>/<model>/seed<N>.jsonl files")
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
    higher_is_better: bool | None  # None: a text entry, or in no row, so its direction is unknown
    display_scale: float
    decimals: int
    text: bool = False  # a text entry (e.g. the device), shown as is


@dataclass
class Cell:
    values: list[float]  # in display scale, one per seed that has a value
    n_seeds: int  # seeds of this (dataset, model) in the summary
    bold: bool = False
    texts: list[str] = field(default_factory=list)  # a text entry, one per seed

    @property
    def text(self) -> str:
        """The distinct texts of the seeds, in order."""
        return " / ".join(dict.fromkeys(self.texts))

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
        missing = [c for c in SUMMARY_COLUMNS if c not in (reader.fieldnames or []) + list(OPTIONAL_COLUMNS)]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append({**OPTIONAL_COLUMNS, **row, "seed": int(row["seed"]),
                             "value": float(row["value"]) if row["value"] != "" else None,
                             "higher_is_better": {"true": True, "false": False, "": None}[
                                 row["higher_is_better"].lower()],
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
        found = {(r["label"], r["higher_is_better"], r["display_scale"], r["decimals"], bool(r["text"]))
                 for r in of_key}
        if len(found) > 1:
            raise ValueError(f"summary: metric {key!r} has conflicting label/direction/scale/decimals/kind: "
                             f"{sorted(found, key=str)}")
        label, hib, scale, decimals, text = found.pop() if found else (key, None, 1.0, 2, False)
        infos[key] = MetricInfo(key, label, hib, scale, decimals, text)
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
        if cell is not None and r["text"]:
            cell.texts.append(r["text"])
        elif cell is not None and r["value"] is not None:
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
    """How one output format writes a cell: ±, bold, the partial-seeds mark, a missing value, text."""

    pm: str
    bold: str  # a format string around the number
    partial: str
    missing: str
    escape: Callable[[str], str]  # for text entries


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
                  "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


LATEX = CellStyle(r"$\pm$", r"\textbf{{{}}}", r"$^\dagger$", "--", latex_escape)
MARKDOWN = CellStyle(" ± ", "**{}**", " †", MISSING, lambda t: str(t).replace("|", r"\|"))
HTML = CellStyle(" ± ", "<b>{}</b>", "<sup>†</sup>", MISSING, html.escape)


@dataclass
class Rendering:
    """Everything the output formats share."""

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

    def numeric(self, key: str) -> bool:
        """Right-aligned: a number column, not a text one."""
        return not self.infos[key].text

    def notes_list(self) -> list[tuple[str, str]]:
        """(mark, text) of every footnote, the partial-seeds note last when a cell needs it."""
        return self.note_texts + ([("†", PARTIAL_NOTE)] if self.any_partial() else [])

    def any_partial(self) -> bool:
        return any(c.partial for c in self.cells.values())

    def cell_text(self, dataset: str, model: str, key: str, style: CellStyle) -> str:
        """Mean (± std over seeds) at the metric's decimals; bold if best; `missing` if no value."""
        cell, decimals = self.cells[dataset, model, key], self.infos[key].decimals
        if cell.texts:
            return style.escape(cell.text)
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


LATEX_MARKS = {"†": r"\dagger"}


def render_latex(r: Rendering) -> str:
    out = [f"% {r.name}: generated by `python -m della table`; do not edit by hand.",
           "% needs \\usepackage{booktabs}",
           f"\\begin{{tabular}}{{ll{''.join('r' if r.numeric(k) else 'l' for k in r.keys)}}}", r"\toprule"]
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
    notes = [f"$^{{{LATEX_MARKS.get(mark, mark)}}}$~{latex_escape(text)}" for mark, text in r.notes_list()]
    if notes:
        out.append("{\\footnotesize\\par\\smallskip " + " \\par\n".join(notes) + "\\par}")
    return "\n".join(out) + "\n"


def render_markdown(r: Rendering) -> str:
    heads = ["Dataset", "Model"] + [
        f"{r.infos[k].label} {r.arrow(k, '↑', '↓')}".strip() + (f" ({r.notes[k]})" if k in r.notes else "")
        for k in r.keys]
    out = ["| " + " | ".join(heads) + " |",
           "|" + "|".join(["---"] * 2 + ["---:" if r.numeric(k) else "---" for k in r.keys]) + "|"]
    for d in r.datasets:
        for m in r.models:
            line = [d, m] + [r.cell_text(d, m, k, MARKDOWN) for k in r.keys]
            out.append("| " + " | ".join(line) + " |")
    notes = [f"({mark}) {text}" if mark != "†" else f"† {text}" for mark, text in r.notes_list()]
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


HTML_STYLE = ("body{font-family:sans-serif;font-size:14px}table{border-collapse:collapse}"
              "th,td{padding:3px 9px}thead tr:last-child th{border-bottom:1px solid}"
              "table{border-top:2px solid;border-bottom:2px solid}td.n{text-align:right}"
              "tbody.block+tbody.block tr:first-child td{border-top:1px solid}p.note{font-size:12px;margin:2px}")


def render_html(r: Rendering) -> str:
    """A standalone page (the Snakemake report shows it as is): one <tbody> per dataset block."""
    esc = html.escape
    spans = "".join(f'<th colspan="{len(keys)}">{esc(title)}</th>' for title, keys in r.groups)
    heads = "".join(f"<th>{esc(r.infos[k].label)}{r.arrow(k, ' ↑', ' ↓')}"
                    + (f"<sup>{r.notes[k]}</sup>" if k in r.notes else "") + "</th>" for k in r.keys)
    out = [f"<!-- {esc(r.name)}: generated by `python -m della table`; do not edit by hand. -->",
           "<table>", f'<thead><tr><th colspan="2"></th>{spans}</tr>',
           f"<tr><th>Dataset</th><th>Model</th>{heads}</tr></thead>"]
    for d in r.datasets:
        out.append('<tbody class="block">')
        for m in r.models:
            cells = "".join(f'<td class="{"n" if r.numeric(k) else "t"}">{r.cell_text(d, m, k, HTML)}</td>'
                            for k in r.keys)
            out.append(f"<tr><td>{esc(d)}</td><td>{esc(m)}</td>{cells}</tr>")
        out.append("</tbody>")
    out.append("</table>")
    out += [f'<p class="note"><sup>{esc(mark)}</sup> {esc(text)}</p>' for mark, text in r.notes_list()]
    return html_document(r.name, HTML_STYLE, out)


def html_document(title: str, style: str, body: list[str]) -> str:
    """A standalone UTF-8 HTML page."""
    return "\n".join(["<!DOCTYPE html>", '<html><head><meta charset="utf-8">',
                      f"<title>{html.escape(title)}</title>", f"<style>{style}</style></head><body>",
                      *body, "</body></html>"]) + "\n"


def render_csv(r: Rendering) -> str:
    """Numbers at display scale (not rounded): mean and std per metric; empty when missing; text as is."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "model", "seeds"] + [c for k in r.keys for c in (k, f"{k}_std", f"{k}_n")])
    for d in r.datasets:
        for m in r.models:
            line: list[Any] = [d, m, r.cells[d, m, r.keys[0]].n_seeds]
            for k in r.keys:
                c = r.cells[d, m, k]
                if c.texts:
                    line += [c.text, "", len(c.texts)]
                    continue
                line += ["" if c.mean is None else repr(c.mean), "" if c.std is None else repr(c.std),
                         len(c.values)]
            writer.writerow(line)
    return buf.getvalue()


RENDERERS: dict[str, Callable[[Rendering], str]] = {
    "tex": render_latex, "csv": render_csv, "md": render_markdown, "html": render_html}


def add_table_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "render a paper table from the summary CSV as .tex, .csv, .md and .html"
    p.add_argument("--summary", required=True, help="CSV written by `python -m della aggregate`")
    p.add_argument("--table", required=True, choices=sorted(TABLES))
    p.add_argument("--datasets", default=None, help="comma-separated, in order (default: as in the summary)")
    p.add_argument("--models", default=None, help="comma-separated row order (default: as in the summary)")
    p.add_argument("--out-prefix", required=True,
                   help="e.g. results/tables/table1 -> table1.{tex,csv,md,html}")


def run_table(args: argparse.Namespace) -> None:
    rows = read_summary(args.summary)
    r = prepare_rendering(rows, args.table, _order(args.datasets, rows, "dataset"),
                          _order(args.models, rows, "model"))
    for ext, render in RENDERERS.items():
        atomic_write_text(f"{args.out_prefix}.{ext}", render(r))
    log.info("%s: %d dataset(s) x %d model(s) -> %s.{%s}", args.table, len(r.datasets),
             len(r.models), args.out_prefix, ",".join(RENDERERS))
