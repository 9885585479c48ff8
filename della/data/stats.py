"""`python -m della data-stats --data DIR... --out-prefix results/<experiment>/tables/table7`: the paper's Table 7.

Per prepared dataset (`results/<experiment>/data/<dataset>/`, named by its directory): the number of train, dev
(valid) and test sentences (source/target pairs of a conditional dataset, {split}.jsonl), and the
average length over all three splits, in whitespace-separated words and, given the dataset's tokenizer
(`--tokenizer`, one per `--data`, in the same order), in BPE tokens without `<s>`/`</s>`; of the
source and the target apart for a conditional dataset ("S: 790 T: 61" in the paper). The paper does
not say which split its average covers; all of them here. Writes `<prefix>.{csv,md,tex,html}`: the
CSV holds the exact counts and means, the other renderings round them as the paper does (42k, 3k;
whole words).
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path

from della.data.conditional import read_pairs
from della.data.corpus import SPLITS, read_lines
from della.data.tokenizer import Tokenizer, load_tokenizer
from della.io import atomic_write_text
from della.tables import dataset_title, html_document, latex_escape

log = logging.getLogger(__name__)

CAPTION = ("Statistics of datasets: the size of the train/dev/test sets and the average length over all "
           "splits. S means source text and T means target text.")
SIDES = ("text", "source", "target")  # a sentence dataset's one side; a conditional dataset's two


@dataclass(frozen=True)
class DatasetStats:
    dataset: str
    sentences: dict[str, int]  # split -> number of sentences (of pairs)
    avg_words: dict[str, float]  # side ("text", or "source" and "target") -> average length
    avg_tokens: dict[str, float] | None  # the same in BPE tokens; None without a tokenizer


def read_sides(data_dir: Path) -> dict[str, dict[str, list[str]]]:
    """side -> split -> texts: {split}.txt's lines, or the sources and targets of {split}.jsonl."""
    if not (data_dir / "train.jsonl").is_file():
        return {"text": {split: read_lines(data_dir / f"{split}.txt") for split in SPLITS}}
    pairs = {split: read_pairs(data_dir / f"{split}.jsonl") for split in SPLITS}
    return {side: {split: [getattr(p, side) for p in pairs[split]] for split in SPLITS}
            for side in ("source", "target")}


def dataset_stats(data_dir: str | Path, tokenizer: Tokenizer | None = None) -> DatasetStats:
    data_dir = Path(data_dir)
    sides = read_sides(data_dir)
    every = {side: [t for split in SPLITS for t in texts[split]] for side, texts in sides.items()}
    avg_tokens = None
    if tokenizer is not None:
        avg_tokens = {side: statistics.fmean(map(len, tokenizer.encode_batch(texts))) for side, texts in every.items()}
    first = next(iter(sides.values()))
    return DatasetStats(dataset=data_dir.name, sentences={s: len(first[s]) for s in SPLITS},
                        avg_words={side: statistics.fmean(len(t.split()) for t in texts) for side, texts in every.items()},
                        avg_tokens=avg_tokens)


def paper_count(n: int) -> str:
    """The paper's rounding, down: 3761 -> 3k (PTB's test set), 15_620 -> 15k (WP's dev set); below 1000
    exact, from a million 1.2M."""
    if n < 1000:
        return str(n)
    if n < 1_000_000:
        return f"{n // 1000}k"
    return f"{n // 100_000 / 10:.1f}M"


def _header(with_tokens: bool) -> list[str]:
    return ["Dataset", "# Train", "# Dev", "# Test", "Avg. length (words)"] + (["Avg. length (BPE)"] * with_tokens)


def paper_length(avg: dict[str, float]) -> str:
    """The paper's whole numbers: "21", or "S: 790 T: 61" for a source and a target."""
    if "text" in avg:
        return f"{avg['text']:.0f}"
    return f"S: {avg['source']:.0f} T: {avg['target']:.0f}"


def _display_rows(stats: list[DatasetStats], with_tokens: bool) -> list[list[str]]:
    rows = []
    for s in stats:
        counts = [paper_count(s.sentences[split]) for split in SPLITS]
        row = [dataset_title(s.dataset, (), spelled_out=False), *counts, paper_length(s.avg_words)]
        if with_tokens:
            row.append("–" if s.avg_tokens is None else paper_length(s.avg_tokens))
        rows.append(row)
    return rows


def render_csv(stats: list[DatasetStats]) -> str:
    """Exact counts and means; a conditional dataset's lengths in the _source and _target columns."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    lengths = [f"{unit}{'' if side == 'text' else '_' + side}" for unit in ("avg_words", "avg_bpe_tokens")
               for side in SIDES]
    writer.writerow(["dataset", "train", "valid", "test", *lengths])
    for s in stats:
        means = [avg.get(side) if avg else None for avg in (s.avg_words, s.avg_tokens) for side in SIDES]
        writer.writerow([s.dataset, *(s.sentences[split] for split in SPLITS),
                         *("" if m is None else repr(m) for m in means)])
    return buf.getvalue()


def render_markdown(stats: list[DatasetStats], with_tokens: bool) -> str:
    header = _header(with_tokens)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in _display_rows(stats, with_tokens)]
    return "\n".join([*lines, "", CAPTION]) + "\n"


def render_latex(stats: list[DatasetStats], with_tokens: bool) -> str:
    header = _header(with_tokens)
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
             r"\toprule", " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in _display_rows(stats, with_tokens)]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{latex_escape(CAPTION)}}}", r"\label{tab:table7}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_html(stats: list[DatasetStats], with_tokens: bool) -> str:
    def cells(tag: str, row: list[str]) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row) + "</tr>"

    body = ["<table>", cells("th", _header(with_tokens)),
            *(cells("td", row) for row in _display_rows(stats, with_tokens)), "</table>",
            f"<p>{html.escape(CAPTION)}</p>"]
    style = "table{border-collapse:collapse}td,th{padding:2px 8px;text-align:right}td:first-child{text-align:left}"
    return html_document("Table 7: dataset statistics", style, body)


def write_table(stats: list[DatasetStats], out_prefix: str | Path) -> None:
    with_tokens = any(s.avg_tokens is not None for s in stats)
    prefix = Path(out_prefix)
    renderings = {"csv": render_csv(stats), "md": render_markdown(stats, with_tokens),
                  "tex": render_latex(stats, with_tokens), "html": render_html(stats, with_tokens)}
    for suffix, text in renderings.items():
        atomic_write_text(prefix.with_name(f"{prefix.name}.{suffix}"), text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.splitlines()[0]
    p.add_argument("--data", nargs="+", required=True, help="prepared dataset directories (results/<experiment>/data/<dataset>)")
    p.add_argument("--tokenizer", nargs="+", default=None,
                   help="the tokenizer directory of each dataset, in --data's order (adds the BPE length)")
    p.add_argument("--out-prefix", required=True, help="e.g. results/<experiment>/tables/table7 -> table7.{csv,md,tex,html}")


def run(args: argparse.Namespace) -> None:
    if args.tokenizer is not None and len(args.tokenizer) != len(args.data):
        raise ValueError(f"--tokenizer: {len(args.tokenizer)} directories for {len(args.data)} --data "
                         f"directories; give one per dataset, in the same order")
    tokenizers = [load_tokenizer(t) for t in args.tokenizer] if args.tokenizer else [None] * len(args.data)
    stats = [dataset_stats(d, tok) for d, tok in zip(args.data, tokenizers)]
    write_table(stats, args.out_prefix)
    log.info("statistics of %d dataset(s) -> %s.{csv,md,tex,html}", len(stats), args.out_prefix)
