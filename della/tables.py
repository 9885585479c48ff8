"""`python -m della aggregate` and `python -m della table`: results JSON -> long CSV -> paper tables.

`aggregate` reads the per-run JSON files (`eval.json` from `della evaluate`, `metrics.json` from
`python -m metrics compute`), all shaped as

    {"kind": ..., "metrics": {"<key>": {"value": float | null, "higher_is_better": bool,
                                         "label": "PPL", "display_scale": 1, "decimals": 2,
                                         "signature": "...", ...}}}

and writes one row per (dataset, model, seed, metric) to a long CSV (SUMMARY_COLUMNS). The
dataset, model and seed come from the path `.../runs/{dataset}/{model}/seed{seed}/<file>.json`; a
reference file `.../human/{dataset}/metrics.json` (the metrics of the human-written test set) is
model "human", seed 0. An entry may carry a `stderr` (the estimator's standard error on that one
run) and `higher_is_better: null` (a number with no better direction, e.g. a parameter count).
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from della import cost
from della.io import atomic_write_text, read_json

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["dataset", "model", "seed", "metric", "value", "stderr", "text", "label",
                   "higher_is_better", "display_scale", "decimals", "signature", "source"]
OPTIONAL_COLUMNS = {"text": "", "stderr": ""}  # absent from summaries written before they existed
REFERENCES = {"human": "Human"}  # reference rows (model -> row label): at the top of a block, never bold
MISSING = "–"

# Table name -> column groups (group title, metric keys), as the paper prints them.
TABLES: dict[str, list[tuple[str, list[str]]]] = {
    "table1": [("Representation Learning", ["iw_ppl", "neg_elbo", "kl", "mi", "au"]),
               ("Generation Quality", ["bleu", "cnd", "mauve"]),
               ("Generation Diversity", ["self_bleu", "dist", "js"])],
    # Table 4 (ablations) and Table 5 (training tricks): the representation metrics only, no group title
    "table4": [("", ["iw_ppl", "neg_elbo", "kl", "mi", "au"])],
    "table5": [("", ["iw_ppl", "neg_elbo", "kl", "mi", "au"])],
    # Table 8 (PTB, SNLI): Table 1's rows and columns on more datasets
    "table8": [("Representation Learning", ["iw_ppl", "neg_elbo", "kl", "mi", "au"]),
               ("Generation Quality", ["bleu", "cnd", "mauve"]),
               ("Generation Diversity", ["self_bleu", "dist", "js"])],
    # Table 2 (WP, CNN/DM: conditional generation); an untitled group: the paper prints none over KL, AU
    "table2": [("Quality", ["bleu", "rouge1", "rouge2", "rougeL", "bertscore"]),
               ("Diversity", ["self_bleu", "dist", "js"]),
               ("", ["kl", "au"])],
    # Table 9 (Quora): Table 2's quality columns and KL, under no group title
    "table9": [("", ["bleu", "rouge1", "rouge2", "rougeL", "bertscore", "kl"])],
    # the text metrics of human text on the paper's datasets (metrics/reference/human.csv)
    "human_reference": [("Generation Quality", ["bleu", "cnd", "mauve"]),
                        ("Generation Diversity", ["self_bleu", "dist", "js"])],
    # the cost of training every model (the paper's Table 6 has DELLA only); keys of della.cost
    "cost": [("Training", ["train_wall_seconds", "train_seconds", "device_hours", "tokens_per_second", "mfu",
                           "train_max_rss_mb", "cuda_max_allocated_mb"]),
             ("Setup", ["parameters", "device"])],
}
# How a table's PPL, ELBO and KL columns are computed -> the eval.json key each column shows (metric
# keys of TABLES and of the paper's CSVs are the summed ones). `summed`: the hierarchical estimator and KL
# summed over latent layers (a bound; the paper's Eq. 6). `official`: the official DELLA code's layer means
# (reference D1, D2) and <s> counted as a word (D9), the convention of the paper's printed numbers.
CONVENTIONS: dict[str, dict[str, str]] = {
    "summed": {},
    "official": {"iw_ppl": "iw_ppl_official", "neg_elbo": "neg_elbo_layer_mean", "kl": "kl_layer_mean"},
}
CONVENTION_REMARKS = {
    "summed": "PPL, ELBO and KL: the hierarchical estimator and the KL summed over latent layers (a bound on "
              "log p(x)); the paper's numbers use the official code's convention (`convention: official`).",
    "official": "PPL, ELBO and KL in the official DELLA code's convention, that of the paper's numbers: "
                "means over latent layers, <s> counted as a word.",
}
# Table name -> the paper's tables with its columns (della/paper/<name>.csv, see its README.md).
PAPER_TABLES = {"table1": ["table1", "table8"], "table8": ["table8"], "table2": ["table2"], "table9": ["table9"],
                "table4": ["table4"], "table5": ["table5"], "cost": ["table6"]}
PAPER_DIR = Path(__file__).parent / "paper"
PAPER_CITATION = "Hu et al. (2022)"
PAPER_CONVENTION = "official"  # of the paper's printed PPL, ELBO and KL: a paper row shows them in no other
# The paper's columns that no column of ours measures, so paper rows leave them out, and why.
PAPER_ONLY = {"cnd": "The paper's CND is not shown: its recipe is unknown here and is not CND*'s "
                     "(metrics/cnd.py; the paper's values exceed CND*'s bound ln 2)."}
PAPER_DATASETS = ("Yelp", "Yahoo", "PTB", "SNLI", "WP", "CNN/DM", "Quora")  # as the paper spells them
PAPER_TITLES = {"WP": "WritingPrompts"}  # a block title the paper spells out (Table 2)
DATASET_ALIASES = {"cnndm": "CNN/DM", "cnn_dailymail": "CNN/DM", "writingprompts": "WP"}  # names without "/"

# ---------------------------------------------------------------------------------------------
# aggregate


def run_path_parts(path: Path) -> tuple[str, str, int]:
    """(dataset, model, seed) from `.../runs/{dataset}/{model}/seed{seed}/<file>.json`, or
    (dataset, "human", 0) from the reference `.../human/{dataset}/metrics.json`."""
    parts = path.parts
    if len(parts) >= 3 and parts[-3] == "human":
        return parts[-2], "human", 0
    if len(parts) < 5 or parts[-5] != "runs" or not parts[-2].startswith("seed") \
            or not parts[-2][4:].isdigit():
        raise ValueError(f"{path}: not a run file; expected .../runs/<dataset>/<model>/seed<N>/<file>.json "
                         "or .../human/<dataset>/metrics.json")
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
        return {"metric": key, "value": None, "stderr": None, "text": entry["text"],
                "label": str(entry.get("label") or key),
                "higher_is_better": None, "display_scale": 1, "decimals": 0,
                "signature": str(entry.get("signature") or "")}
    if not isinstance(entry, dict) or "value" not in entry:
        raise ValueError(f"{where}: expected an object with a 'value' (or a 'text')")
    value = entry["value"]
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{where}.value: expected a number or null, got {value!r}")
    if value is not None and not math.isfinite(value):
        value = None
    if "higher_is_better" not in entry:
        raise ValueError(f"{where}: no 'higher_is_better' (true, false, or null for no direction)")
    hib = entry["higher_is_better"]
    if hib is not None and not isinstance(hib, bool):
        raise ValueError(f"{where}.higher_is_better: expected true, false or null, got {hib!r}")
    stderr = entry.get("stderr")
    if stderr is not None and (isinstance(stderr, bool) or not isinstance(stderr, (int, float))
                               or not (math.isfinite(stderr) and stderr >= 0)):
        raise ValueError(f"{where}.stderr: expected a number >= 0 or null, got {stderr!r}")
    scale, decimals = entry.get("display_scale", 1), entry.get("decimals", 2)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
        raise ValueError(f"{where}.display_scale: expected a positive number, got {scale!r}")
    if isinstance(decimals, bool) or not isinstance(decimals, int) or decimals < 0:
        raise ValueError(f"{where}.decimals: expected an integer >= 0, got {decimals!r}")
    if value is None:
        log.warning("%s: no value (%s)", where, entry.get("error", "no error given"))
    return {"metric": key, "value": value, "stderr": None if value is None or stderr is None else stderr,
            "text": "", "label": str(entry.get("label") or key),
            "higher_is_better": hib, "display_scale": scale, "decimals": decimals,
            "signature": str(entry.get("signature") or "")}


def reference_entries(path: Path) -> dict[str, dict[str, Any]]:
    """dataset -> metric entries of a shipped human reference CSV (metrics/reference/human.csv)."""
    out: dict[str, dict[str, Any]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                out.setdefault(row["dataset"], {})[row["metric"]] = {
                    "value": float(row["value"]) if row["value"] else None, "label": row["label"],
                    "higher_is_better": {"True": True, "False": False}[row["higher_is_better"]],
                    "display_scale": float(row["display_scale"]), "decimals": int(row["decimals"]),
                    "signature": row["signature"]}
            except (KeyError, ValueError) as err:
                raise ValueError(f"{path}:{line}: not a reference row ({err!r})") from None
    return out


def _results(path: Path):
    """((dataset, model, seed), metrics) of every result a file holds: one per results file, one
    per dataset of a reference CSV (model "human", seed 0)."""
    if path.suffix == ".csv":
        return [((dataset, "human", 0), metrics) for dataset, metrics in reference_entries(path).items()]
    return [load_entries(path)]


def collect(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Summary rows from results files (JSON, benchmark JSONL, reference CSV), in input order;
    duplicates are an error."""
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, str, int, str], str] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        for (dataset, model, seed), metrics in _results(path):
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
                         "stderr": "" if row["stderr"] is None else repr(float(row["stderr"])),
                         "higher_is_better": "" if hib is None else "true" if hib else "false"})
    return buf.getvalue()


def add_aggregate_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "collect eval.json/metrics.json (or run.json and benchmark JSONL) files into one long CSV"
    p.add_argument("--inputs", nargs="+", required=True,
                   help="results/<experiment>/runs/<dataset>/<model>/seed<N>/<file>.json files, "
                        "results/<experiment>/human/<dataset>/metrics.json references, "
                        "results/benchmarks/<rule>/<dataset>/<model>/seed<N>.jsonl files")
    p.add_argument("--out", required=True, help="output CSV, e.g. results/<experiment>/summary.csv")


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
    higher_is_better: bool | None  # None: no direction (a text entry, a count), or in no row
    display_scale: float
    decimals: int
    text: bool = False  # a text entry (e.g. the device), shown as is
    known: bool = True  # False: in no row of the summary, so its display settings are unknown


@dataclass
class Cell:
    values: list[float]  # in display scale, one per seed that has a value
    n_seeds: int  # seeds of this (dataset, model) in the summary
    stderrs: list[float] = field(default_factory=list)  # display scale, of the seeds that report one
    bold: bool = False
    texts: list[str] = field(default_factory=list)  # a text entry, one per seed
    decimals: int | None = None  # shown at these, not the metric's (a paper number as printed)

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
    def stderr(self) -> float | None:
        """The estimator's standard error of a single-seed value, when it reports one."""
        return self.stderrs[0] if len(self.values) == 1 and len(self.stderrs) == 1 else None

    @property
    def error(self) -> float | None:
        """What ± shows: the std over seeds; for one seed, the estimator's standard error."""
        return self.std if self.std is not None else self.stderr

    @property
    def partial(self) -> bool:
        return 0 < len(self.values) < self.n_seeds


@dataclass
class Row:
    model: str  # the model entry (or "human"); a paper row has the entry it sits under
    label: str
    kind: str  # "model"; "reference" (e.g. Human) and "paper" rows never compete for bold
    cells: dict[str, Cell]


@dataclass
class Block:
    dataset: str
    title: str  # "Dataset: Yahoo"
    rows: list[Row]


@dataclass(frozen=True)
class PaperValue:
    value: float  # in the unit of our metric's stored value: printed / scale
    printed: float  # as the paper prints it
    source: str  # table, block, row and column
    note: str
    decimals: int  # the paper's, shown as printed (AU 23, not 23.00)


@dataclass(frozen=True)
class TableOptions:
    labels: dict[str, str] = field(default_factory=dict)  # model entry -> row label (default: the entry)
    paper: bool = False  # print the paper's numbers under our rows
    paper_models: dict[str, str] = field(default_factory=dict)  # entry -> the paper's model (default: label)
    paper_datasets: dict[str, str] = field(default_factory=dict)  # dataset -> the paper's (default: any case)
    dataset_models: dict[str, list[str]] = field(default_factory=dict)  # dataset -> its rows (default: every model)
    convention: str = "summed"  # a key of CONVENTIONS


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
                             "value": _optional_float(row["value"]),
                             "stderr": _optional_float(row.get("stderr", "")),
                             "higher_is_better": {"true": True, "false": False, "": None}[
                                 row["higher_is_better"].lower()],
                             "display_scale": float(row["display_scale"]),
                             "decimals": int(row["decimals"])})
            except (ValueError, KeyError) as err:
                raise ValueError(f"{path}:{line}: bad value ({err})") from None
    return rows


def _optional_float(text: str) -> float | None:
    return float(text) if text != "" else None


def read_paper(name: str) -> dict[tuple[str, str, str], PaperValue]:
    """(paper dataset, paper model, metric key) -> value, from della/paper/<name>.csv."""
    path = PAPER_DIR / f"{name}.csv"
    out: dict[tuple[str, str, str], PaperValue] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                ident, scale = (row["dataset"], row["model"], row["metric"]), float(row["scale"])
                if ident in out or scale <= 0:
                    raise ValueError("a repeated (dataset, model, metric)" if ident in out else "scale <= 0")
                printed = float(row["printed"])
                decimals = len(row["printed"].strip().partition(".")[2])
                out[ident] = PaperValue(printed / scale, printed, row["source"], row["note"], decimals)
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{line}: bad row ({err})") from None
    return out


def paper_values(table: str) -> dict[tuple[str, str, str], PaperValue]:
    """The paper's numbers for the columns of one of our tables (empty when the paper has none)."""
    out: dict[tuple[str, str, str], PaperValue] = {}
    for name in PAPER_TABLES.get(table, []):
        out.update(read_paper(name))
    return out


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
        if found:
            infos[key] = MetricInfo(key, *found.pop())
        else:
            infos[key] = MetricInfo(key, key, None, 1.0, 2, known=False)
    return infos


def paper_labels(infos: dict[str, MetricInfo], rows: list[dict[str, Any]],
                 column: dict[str, str]) -> dict[str, MetricInfo]:
    """A convention's PPL, ELBO and KL columns under the paper's names (those of the summed keys);
    a remark states the convention."""
    plain, out = metric_infos(rows, list(column)), dict(infos)
    for summed, key in column.items():
        if key in out and plain[summed].known:
            out[key] = replace(out[key], label=plain[summed].label)
    return out


def _order(requested: str | None, rows: list[dict[str, Any]], column: str) -> list[str]:
    if requested:
        return [x.strip() for x in requested.split(",") if x.strip()]
    if column == "dataset":  # a dataset with reference rows only (e.g. the human reference table) is shown
        return list(dict.fromkeys(r[column] for r in rows))
    return list(dict.fromkeys(r[column] for r in rows if r["model"] not in REFERENCES))


def run_cells(rows: list[dict[str, Any]], infos: dict[str, MetricInfo]) -> dict[str, Cell]:
    """Cells of one (dataset, model): its rows of the summary, one per seed and metric."""
    cells = {k: Cell([], len({r["seed"] for r in rows})) for k in infos}
    for r in rows:
        cell = cells.get(r["metric"])
        if cell is not None and r["text"]:
            cell.texts.append(r["text"])
        elif cell is not None and r["value"] is not None:
            cell.values.append(r["value"] * r["display_scale"])
            if r["stderr"] is not None:
                cell.stderrs.append(r["stderr"] * r["display_scale"])
    return cells


def mark_best(cells: list[Cell], info: MetricInfo) -> None:
    """Bold the best mean of a column when it is distinguishable from the runner-up: not equal at the
    shown precision, its mean ± error range does not overlap the runner-up's, and neither lacks seeds
    (a partial cell's spread is unknown: its failed seeds may be what would tell them apart)."""
    if info.higher_is_better is None:
        return
    ranked = sorted((c for c in cells if c.values), key=lambda c: c.mean, reverse=info.higher_is_better)
    if len(ranked) < 2:
        return
    best, second = ranked[0], ranked[1]
    if best.partial or second.partial or round(best.mean, info.decimals) == round(second.mean, info.decimals):
        return
    best.bold = abs(best.mean - second.mean) > (best.error or 0.0) + (second.error or 0.0)


def dataset_title(dataset: str, paper_names: Iterable[str], spelled_out: bool = True) -> str:
    """The paper's spelling when the dataset is one of its datasets (ptb -> PTB, cnndm -> CNN/DM; WP as
    Table 2's block title spells it out unless not `spelled_out`, as Tables 6 and 7), else capitalized."""
    dataset = DATASET_ALIASES.get(dataset.lower(), dataset)
    same = [p for p in (*paper_names, *PAPER_DATASETS) if p.lower() == dataset.lower()]
    if not same:
        return dataset[:1].upper() + dataset[1:]
    return PAPER_TITLES.get(same[0], same[0]) if spelled_out else same[0]


def paper_dataset(dataset: str, options: TableOptions, known: set[str]) -> str | None:
    """The paper's dataset that `dataset` reproduces: the option's mapping, else the same name in any case."""
    if dataset in options.paper_datasets:
        name = options.paper_datasets[dataset]
        if name not in known:
            raise ValueError(f"--paper-dataset {dataset}={name}: the paper has no dataset {name!r} "
                             f"in this table (it has {sorted(known)})")
        return name
    dataset = DATASET_ALIASES.get(dataset.lower(), dataset)
    return next((p for p in sorted(known) if p.lower() == dataset.lower()), None)


def paper_row(entry: str, name: str, dataset: str, paper: dict[tuple[str, str, str], PaperValue],
              infos: dict[str, MetricInfo]) -> Row | None:
    """The paper's numbers for model `name` on `dataset` in our columns' units (as printed in a column
    none of our rows has); None if it has none."""
    found = {k: paper[dataset, name, k] for k in infos if (dataset, name, k) in paper}
    if not found:
        return None
    cells = {k: Cell([], 1) for k in infos}
    for k, v in found.items():
        cells[k].values.append(v.value * infos[k].display_scale if infos[k].known else v.printed)
        cells[k].decimals = v.decimals
    return Row(entry, "paper", "paper", cells)


def build_blocks(rows: list[dict[str, Any]], datasets: list[str], models: list[str],
                 infos: dict[str, MetricInfo], options: TableOptions,
                 paper: dict[tuple[str, str, str], PaperValue]) -> tuple[list[Block], list[str]]:
    """A block per dataset (reference rows first, then the models, each followed by its paper row
    when asked for), bold marked among the model rows; and the remarks the paper rows need."""
    by_run: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        by_run.setdefault((r["dataset"], r["model"]), []).append(r)
    known = {d for d, _, _ in paper}
    blocks, remarks = [], []
    for d in datasets:
        block = Block(d, f"Dataset: {dataset_title(d, known)}", [
            Row(ref, label, "reference", run_cells(by_run[d, ref], infos))
            for ref, label in REFERENCES.items() if (d, ref) in by_run])
        in_paper = paper_dataset(d, options, known) if options.paper else None
        for m in [m for m in models if m in options.dataset_models.get(d, models)]:
            label = options.labels.get(m, m)
            block.rows.append(Row(m, label, "model", run_cells(by_run.get((d, m), []), infos)))
            extra = in_paper and paper_row(m, options.paper_models.get(m, label), in_paper, paper, infos)
            if extra:
                block.rows.append(extra)
        for key, info in infos.items():
            mark_best([row.cells[key] for row in block.rows if row.kind == "model"], info)
        if options.paper:
            remarks.append(paper_remark(block, in_paper, paper, options))
        blocks.append(block)
    return blocks, remarks


def paper_remark(block: Block, name: str | None, paper: dict[tuple[str, str, str], PaperValue],
                 options: TableOptions) -> str:
    """Where a block's paper rows come from, or that the paper has none for its dataset."""
    if name is None:
        return f"{block.title}: the paper reports no numbers for this dataset."
    models = {options.paper_models.get(r.model, options.labels.get(r.model, r.model))  # as build_blocks names it
              for r in block.rows if r.kind == "paper"}
    shown = [v for (d, m, _), v in paper.items() if d == name and m in models]
    if not shown:
        return f"{block.title}: the paper has no row for these models on {name}."
    tables = ", ".join(dict.fromkeys(v.source.split(",")[0] for v in shown))
    notes = "; ".join(dict.fromkeys(v.note for v in shown if v.note))
    return (f"{block.title}: paper rows from {PAPER_CITATION}, {tables}, Dataset: {PAPER_TITLES.get(name, name)}, "
            "in this table's units" + (f" ({notes})" if notes else "") + ".")


@dataclass(frozen=True)
class CellStyle:
    """How one output format writes a cell and a row label."""

    pm: str
    bold: str  # a format string around the number
    partial: str
    missing: str
    escape: Callable[[str], str]  # for text entries and labels
    paper: str  # the label of a paper row
    label: Callable[[str], str]  # a row label, escaped


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
                  "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def _markdown_escape(text: str) -> str:
    return str(text).replace("|", r"\|")


NBSP = "\u00a0"  # keeps "4.86 ± 0.03" and a model's name on one line in Markdown
LATEX = CellStyle(r"$\pm$", r"\textbf{{{}}}", r"$^\dagger$", "--", latex_escape, r"\quad\textit{paper}",
                  latex_escape)
MARKDOWN = CellStyle(f"{NBSP}±{NBSP}", "**{}**", f"{NBSP}†", MISSING, _markdown_escape, "↳ *paper*",
                     lambda t: _markdown_escape(t).replace(" ", NBSP))
HTML = CellStyle(" ± ", "<b>{}</b>", "<sup>†</sup>", MISSING, html.escape, "↳ <i>paper</i>", html.escape)

PARTIAL_NOTE = "mean over the seeds that have a value (fewer than the seeds run)"
LEGEND = ("↑/↓: higher/lower is better. Mean ± std over seeds; with one seed, ± is the estimator's "
          "standard error where it reports one. Bold: the best value, only where it is distinguishable "
          "(not equal at the shown precision, its ± range clear of the runner-up's, neither missing seeds). "
          "–: no value.")


def fixed(x: float, decimals: int) -> str:
    """x at `decimals`, without the sign of a negative number that rounds to zero ("-0.00")."""
    text = f"{x:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


@dataclass
class Rendering:
    """Everything the output formats share."""

    name: str
    groups: list[tuple[str, list[str]]]
    infos: dict[str, MetricInfo]
    blocks: list[Block]
    notes: dict[str, str]  # metric key -> footnote mark ("a", "b", ...)
    note_texts: list[tuple[str, str]]  # (mark, text): each metric's recipe signature
    remarks: list[str]  # general notes: the legend, where the paper rows come from

    @property
    def keys(self) -> list[str]:
        return [k for _, keys in self.groups for k in keys]

    @property
    def titled(self) -> bool:
        """Whether the header has a row of group titles (Table 9 has none)."""
        return any(title for title, _ in self.groups)

    def arrow(self, key: str, up: str, down: str) -> str:
        hib = self.infos[key].higher_is_better
        return "" if hib is None else (up if hib else down)

    def numeric(self, key: str) -> bool:
        """Right-aligned: a number column, not a text one."""
        return not self.infos[key].text

    def general_notes(self) -> list[str]:
        """The legend, the remarks, and the partial-seeds note when a cell needs it."""
        partial = any(c.partial for b in self.blocks for row in b.rows for c in row.cells.values())
        return [LEGEND, *self.remarks] + ([f"† {PARTIAL_NOTE}."] if partial else [])

    def row_label(self, row: Row, style: CellStyle) -> str:
        return style.paper if row.kind == "paper" else style.label(row.label)

    def cell_text(self, row: Row, key: str, style: CellStyle) -> str:
        """Mean (± its error) at the metric's decimals; bold if best; `missing` if no value."""
        cell = row.cells[key]
        decimals = self.infos[key].decimals if cell.decimals is None else cell.decimals
        if cell.texts:
            return style.escape(cell.text)
        if cell.mean is None:
            return style.missing
        text = fixed(cell.mean, decimals)
        if cell.error is not None:
            text += f"{style.pm}{fixed(cell.error, decimals)}"
        return (style.bold.format(text) if cell.bold else text) + (style.partial if cell.partial else "")


def prepare_rendering(rows: list[dict[str, Any]], table: str, datasets: list[str], models: list[str],
                      options: TableOptions = TableOptions()) -> Rendering:
    column = CONVENTIONS[options.convention]
    groups = [(title, [column.get(k, k) for k in ks]) for title, ks in TABLES[table]]
    keys = [k for _, ks in groups for k in ks]
    unknown = [d for d in datasets if not any(r["dataset"] == d for r in rows)]
    if unknown:
        raise ValueError(f"--datasets: no rows for {unknown} in the summary")
    rows = [r for r in rows if r["dataset"] in datasets and (r["model"] in models or r["model"] in REFERENCES)]
    infos = paper_labels(metric_infos(rows, keys), rows, column)
    printed = paper_values(table)
    if options.paper and not printed:
        raise ValueError(f"--paper: the paper has no table with the columns of {table!r}")
    in_paper_convention = CONVENTIONS[PAPER_CONVENTION]
    paper = {(d, m, in_paper_convention.get(k, k)): v for (d, m, k), v in printed.items() if k not in PAPER_ONLY}
    blocks, remarks = build_blocks(rows, datasets, models, infos, options, paper)
    if any(column.get(k, k) in keys for k in in_paper_convention):  # a PPL, ELBO or KL column
        remarks.append(CONVENTION_REMARKS[options.convention])
    if options.paper:
        remarks += [PAPER_ONLY[k] for k in sorted({k for _, _, k in printed} & set(PAPER_ONLY)) if k in keys]
    notes: dict[str, str] = {}
    note_texts: list[tuple[str, str]] = []
    for key in keys:
        sigs = list(dict.fromkeys(r["signature"] for r in rows if r["metric"] == key and r["signature"]))
        if sigs:
            mark = "abcdefghijklmnopqrstuvwxyz"[len(notes) % 26]
            notes[key] = mark
            note_texts.append((mark, f"{infos[key].label}: {'; '.join(sigs)}"))
    return Rendering(table, groups, infos, blocks, notes, note_texts, remarks)


def render_latex(r: Rendering, compact: bool = False) -> str:
    """booktabs LaTeX in the paper's layout; `compact`: no signature footnotes, one short legend."""
    width = 1 + len(r.keys)
    out = [f"% {r.name}: generated by `python -m della table`; do not edit by hand.",
           "% needs \\usepackage{booktabs}",
           f"\\begin{{tabular}}{{l{''.join('r' if r.numeric(k) else 'l' for k in r.keys)}}}", r"\toprule"]
    spans, rules, col = [""], [], 2
    for title, keys in r.groups:
        spans.append(f"\\multicolumn{{{len(keys)}}}{{c}}{{{latex_escape(title)}}}")
        if title:  # an untitled group (e.g. Table 2's KL, AU) has no rule under its empty span
            rules.append(f"\\cmidrule(lr){{{col}-{col + len(keys) - 1}}}")
        col += len(keys)
    if r.titled:
        out += [" & ".join(spans) + r" \\", " ".join(rules)]
    heads = ["Model"]
    for k in r.keys:
        mark = f"$^{{{r.notes[k]}}}$" if k in r.notes and not compact else ""
        heads.append(latex_escape(r.infos[k].label) + r.arrow(k, r"$\uparrow$", r"$\downarrow$") + mark)
    out += [" & ".join(heads) + r" \\", r"\midrule"]
    for i, block in enumerate(r.blocks):
        if i:
            out.append(r"\midrule")
        out.append(f"\\multicolumn{{{width}}}{{l}}{{\\textit{{{latex_escape(block.title)}}}}} \\\\")
        for row in block.rows:
            out.append(" & ".join([r.row_label(row, LATEX)] + [r.cell_text(row, k, LATEX) for k in r.keys])
                       + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    general = [latex_escape(n).replace("±", r"$\pm$").replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$")
               .replace("–", "--").replace("†", r"$^{\dagger}$") for n in r.general_notes()]
    if compact:
        out.append("{\\footnotesize\\par\\smallskip " + " ".join(general) + "\\par}")
    else:
        notes = [f"$^{{{mark}}}$~{latex_escape(text)}" for mark, text in r.note_texts] + general
        out.append("{\\footnotesize\\par\\smallskip " + " \\par\n".join(notes) + "\\par}")
    return "\n".join(out) + "\n"


def render_markdown(r: Rendering) -> str:
    heads = ["Model"] + [f"{r.infos[k].label} {r.arrow(k, '↑', '↓')}".strip()
                         + (f" ({r.notes[k]})" if k in r.notes else "") for k in r.keys]
    out = ["| " + " | ".join(heads) + " |",
           "|" + "|".join(["---"] + ["---:" if r.numeric(k) else "---" for k in r.keys]) + "|"]
    if r.titled:  # Markdown has one header row: the group titles open the body, over their first column
        titles = [f"*{title}*" if title and i == 0 else "" for title, keys in r.groups for i in range(len(keys))]
        out.append("| " + " | ".join([""] + titles) + " |")
    for block in r.blocks:
        out.append("| " + " | ".join([f"**{_markdown_escape(block.title)}**"] + [""] * len(r.keys)) + " |")
        for row in block.rows:
            out.append("| " + " | ".join([r.row_label(row, MARKDOWN)]
                                         + [r.cell_text(row, k, MARKDOWN) for k in r.keys]) + " |")
    notes = [f"({mark}) {text}" for mark, text in r.note_texts] + r.general_notes()
    out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


HTML_STYLE = ("body{font-family:sans-serif;font-size:14px}table{border-collapse:collapse}"
              "th,td{padding:3px 9px;white-space:nowrap}thead tr:last-child th{border-bottom:1px solid}"
              "table{border-top:2px solid;border-bottom:2px solid}td.n{text-align:right}"
              "td.block{font-style:italic;padding-top:8px}tr.paper td{color:#666}"
              "tbody.block+tbody.block tr:first-child td{border-top:1px solid}p.note{font-size:12px;margin:2px}")


def render_html(r: Rendering) -> str:
    """A standalone page (the Snakemake report shows it as is): one <tbody> per dataset block."""
    esc = html.escape
    spans = "".join(f'<th colspan="{len(keys)}">{esc(title)}</th>' for title, keys in r.groups)
    heads = "".join(f"<th>{esc(r.infos[k].label)}{r.arrow(k, ' ↑', ' ↓')}"
                    + (f"<sup>{r.notes[k]}</sup>" if k in r.notes else "") + "</th>" for k in r.keys)
    out = [f"<!-- {esc(r.name)}: generated by `python -m della table`; do not edit by hand. -->",
           "<table>", "<thead>" + (f"<tr><th></th>{spans}</tr>" if r.titled else ""),
           f"<tr><th>Model</th>{heads}</tr></thead>"]
    for block in r.blocks:
        out += ['<tbody class="block">',
                f'<tr><td class="block" colspan="{1 + len(r.keys)}">{esc(block.title)}</td></tr>']
        for row in block.rows:
            cells = "".join(f'<td class="{"n" if r.numeric(k) else "t"}">{r.cell_text(row, k, HTML)}</td>'
                            for k in r.keys)
            out.append(f'<tr class="{row.kind}"><td>{r.row_label(row, HTML)}</td>{cells}</tr>')
        out.append("</tbody>")
    out.append("</table>")
    out += [f'<p class="note"><sup>{esc(mark)}</sup> {esc(text)}</p>' for mark, text in r.note_texts]
    out += [f'<p class="note">{esc(text)}</p>' for text in r.general_notes()]
    return html_document(r.name, HTML_STYLE, out)


def html_document(title: str, style: str, body: list[str]) -> str:
    """A standalone UTF-8 HTML page."""
    return "\n".join(["<!DOCTYPE html>", '<html><head><meta charset="utf-8">',
                      f"<title>{html.escape(title)}</title>", f"<style>{style}</style></head><body>",
                      *body, "</body></html>"]) + "\n"


def render_csv(r: Rendering) -> str:
    """Numbers at display scale (not rounded): mean, std over seeds (or a single seed's standard error)
    and count per metric; empty when missing; text as is. `kind`: model, reference or paper."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "model", "label", "kind", "seeds"]
                    + [c for k in r.keys for c in (k, f"{k}_std", f"{k}_se", f"{k}_n")])
    for block in r.blocks:
        for row in block.rows:
            line: list[Any] = [block.dataset, row.model, row.label, row.kind, row.cells[r.keys[0]].n_seeds]
            for k in r.keys:
                c = row.cells[k]
                if c.texts:
                    line += [c.text, "", "", len(c.texts)]
                    continue
                line += [_repr(c.mean), _repr(c.std), _repr(c.stderr), len(c.values)]
            writer.writerow(line)
    return buf.getvalue()


def _repr(x: float | None) -> str:
    return "" if x is None else repr(x)


# output suffix -> renderer: `--out-prefix results/<experiment>/tables/table1` writes table1.tex, table1.compact.tex, ...
RENDERERS: dict[str, Callable[[Rendering], str]] = {
    "tex": render_latex, "compact.tex": lambda r: render_latex(r, compact=True), "csv": render_csv,
    "md": render_markdown, "html": render_html}


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    """`KEY=VALUE` arguments (repeatable flag) as a dict."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def add_table_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "render a paper table from the summary CSV as .tex, .compact.tex, .csv, .md and .html"
    p.add_argument("--summary", required=True, help="CSV written by `python -m della aggregate`")
    p.add_argument("--table", required=True, choices=sorted(TABLES))
    p.add_argument("--datasets", default=None, help="comma-separated, in order (default: as in the summary)")
    p.add_argument("--models", default=None, help="comma-separated row order (default: as in the summary)")
    p.add_argument("--label", action="append", metavar="MODEL=LABEL",
                   help="row label of a model entry, e.g. 'gpt2=GPT-2' (repeatable; default: the entry name)")
    p.add_argument("--paper", action="store_true",
                   help="print the paper's published numbers (della/paper/) under each model it reports")
    p.add_argument("--paper-model", action="append", metavar="MODEL=NAME",
                   help="the paper's name of a model entry, e.g. 'della-official=DELLA' (default: its label)")
    p.add_argument("--paper-dataset", action="append", metavar="DATASET=NAME",
                   help="the paper's dataset a dataset reproduces, e.g. 'ptb_small=PTB' "
                        "(default: the same name in any case)")
    p.add_argument("--dataset-models", action="append", metavar="DATASET=M1,M2",
                   help="the models run on a dataset: its block has only their rows (default: every model)")
    p.add_argument("--convention", choices=sorted(CONVENTIONS), default="summed",
                   help="PPL, ELBO and KL as summed over latent layers (default; a bound) or as the official "
                        "DELLA code's layer means, the paper's printed numbers' convention")
    p.add_argument("--out-prefix", required=True,
                   help="e.g. results/<experiment>/tables/table1 -> table1.{tex,compact.tex,csv,md,html}")


def run_table(args: argparse.Namespace) -> None:
    rows = read_summary(args.summary)
    options = TableOptions(_pairs(args.label, "--label"), args.paper, _pairs(args.paper_model, "--paper-model"),
                           _pairs(args.paper_dataset, "--paper-dataset"),
                           {d: models.split(",") for d, models in _pairs(args.dataset_models, "--dataset-models").items()},
                           args.convention)
    r = prepare_rendering(rows, args.table, _order(args.datasets, rows, "dataset"),
                          _order(args.models, rows, "model"), options)
    for ext, render in RENDERERS.items():
        atomic_write_text(f"{args.out_prefix}.{ext}", render(r))
    log.info("%s: %d dataset block(s) -> %s.{%s}", args.table, len(r.blocks), args.out_prefix,
             ",".join(RENDERERS))
