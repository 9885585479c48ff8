"""`python -m della prepare-data`: validate a corpus and write `results/<experiment>/data/<dataset>/`.

Output (each file written atomically): `train.txt`, `valid.txt`, `test.txt` (one cleaned example
per line, no empty lines); for the synthetic source also `{split}.attributes.jsonl`, aligned line
by line with the text; and `prepare.json`, which records the source, what was dropped (empty lines,
with their line numbers), the caps applied and the md5 of every output file.

Sources:
  synthetic  della.data.synthetic's grammar (--seed, --n-train/--n-valid/--n-test)
  dir        a local directory with train.txt, valid.txt and test.txt (--path)
  hf         a Hugging Face dataset id or a local `save_to_disk` directory (--path, --text-field)
  jsonl      a conditional task: a directory with {train,valid,test}.jsonl of source/target pairs
             (--path; preprocessing and caps in della.data.conditional, output {split}.jsonl)
  hf-conditional  a conditional task from a Hugging Face dataset (--path, --source-field, --target-field)
  synthetic-conditional  the grammar as a conditional task: prompt -> sentence (--seed, --n-*)

Caps keep the first N lines: --max-train-lines for train, --max-eval-lines for valid and test.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import della
from della.config import CONDITIONAL_SOURCES
from della.data import conditional, synthetic
from della.data.corpus import SPLITS, LineScan, clear_prepared, scan_lines
from della.io import atomic_write_json, md5sum, write_lines

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "dir", "hf", *CONDITIONAL_SOURCES)
SYNTHETIC = ("synthetic", "synthetic-conditional")
DEFAULT_SIZES = {"train": 3000, "valid": 300, "test": 300}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.splitlines()[0]
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--path", help="dir: corpus directory; hf: dataset id or save_to_disk directory")
    p.add_argument("--text-field", default=None, help="hf: the column holding the text (default: text)")
    p.add_argument("--hf-config", default=None, help="hf: dataset configuration name, if it has several")
    p.add_argument("--seed", type=int, default=None, help="synthetic: grammar seed (default 0)")
    for split in SPLITS:
        p.add_argument(f"--n-{split}", type=int, default=None,
                       help=f"synthetic: number of {split} sentences (default {DEFAULT_SIZES[split]})")
    p.add_argument("--max-train-lines", type=int, default=None, help="keep the first N train lines")
    p.add_argument("--max-eval-lines", type=int, default=None, help="keep the first N valid/test lines")
    p.add_argument("--out", required=True, help="output directory, e.g. results/<experiment>/data/<dataset>")
    conditional.add_arguments(p)


def run(args: argparse.Namespace) -> None:
    _check_args(args)
    sizes = {s: getattr(args, f"n_{s}") or DEFAULT_SIZES[s] for s in SPLITS}
    if args.source in CONDITIONAL_SOURCES:
        conditional.run(args, _provenance(args), sizes)
        return
    attributes: dict[str, list[dict[str, str]]] = {}
    if args.source == "synthetic":
        corpus = synthetic.generate_corpus(sizes, seed=args.seed or 0)
        scans = {}
        for split, examples in corpus.items():
            scans[split] = LineScan(path=f"synthetic[{split}]")
            for number, ex in enumerate(examples, start=1):
                scans[split].add(number, ex.text)
            attributes[split] = [ex.attributes for ex in examples]
    elif args.source == "dir":
        scans = {split: scan_lines(Path(args.path) / f"{split}.txt") for split in SPLITS}
    else:
        from della.data.hf import load_hf_splits

        scans = load_hf_splits(args.path, args.text_field or "text", args.hf_config)
    write_prepared(scans, attributes, Path(args.out), _provenance(args),
                   caps={"train": args.max_train_lines, "valid": args.max_eval_lines,
                         "test": args.max_eval_lines})


def _check_args(args: argparse.Namespace) -> None:
    synthetic_only = [f"--{name.replace('_', '-')}" for name in ("seed", "n_train", "n_valid", "n_test")
                      if getattr(args, name) is not None]
    if args.source not in SYNTHETIC and synthetic_only:
        raise ValueError(f"{', '.join(synthetic_only)}: only for --source {' | '.join(SYNTHETIC)}")
    if args.source in SYNTHETIC and args.path:
        raise ValueError(f"--path: not used by --source {args.source}")
    if args.source in ("dir", "hf", "jsonl", "hf-conditional") and not args.path:
        raise ValueError(f"--path: required for --source {args.source}")
    if args.source != "hf" and args.text_field:
        raise ValueError("--text-field: only for --source hf")
    if args.source not in ("hf", "hf-conditional") and args.hf_config:
        raise ValueError("--hf-config: only for --source hf | hf-conditional")
    conditional.check_args(args)
    for name in ("max_train_lines", "max_eval_lines", "n_train", "n_valid", "n_test"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")


def _provenance(args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {"source": args.source, "della_version": della.__version__}
    if args.source in SYNTHETIC:
        info.update(seed=args.seed or 0, grammar=synthetic.describe())
    else:
        info["path"] = args.path
    if args.source == "hf":
        info.update(text_field=args.text_field or "text", hf_config=args.hf_config)
    return info


def write_prepared(scans: dict[str, LineScan], attributes: dict[str, list[dict[str, str]]],
                   out: Path, provenance: dict[str, Any], caps: dict[str, int | None]) -> dict[str, Any]:
    """Check every split, clear what an earlier preparation left in `out`, write every split capped,
    then prepare.json (last, so it marks a complete set)."""
    report: dict[str, Any] = {**provenance, "caps": {"max_train_lines": caps["train"],
                                                     "max_eval_lines": caps["valid"]},
                              "splits": {}, "files": {}}
    for split, scan in scans.items():
        if not scan.lines:
            raise ValueError(f"{scan.path}: split {split!r} has no non-empty lines "
                             f"({scan.lines_read} read, {len(scan.empty_line_numbers)} empty)")
    clear_prepared(out)
    for split in SPLITS:
        scan = scans[split]
        if scan.empty_line_numbers:
            log.warning("%s: dropped %d empty line(s): %s%s", scan.path, len(scan.empty_line_numbers),
                        scan.empty_line_numbers[:10], " ..." if len(scan.empty_line_numbers) > 10 else "")
        if scan.line_breaks_replaced:
            log.warning("%s: %d line break(s) inside lines (\\r, \\u2028, ...) became spaces", scan.path,
                        scan.line_breaks_replaced)
        tabbed = sum("\t" in line for line in scan.lines)
        if 2 * tabbed > len(scan.lines):  # the official DELLA loader keeps only the last tab-separated field
            log.warning("%s: %d of %d lines hold a tab (a label column?): they are kept whole, tab included",
                        scan.path, tabbed, len(scan.lines))
        lines, cap = scan.lines, caps[split]
        entry = scan.report()
        entry["capped_from"] = len(lines) if cap is not None and len(lines) > cap else None
        lines = lines[:cap] if cap is not None else lines
        entry["lines_written"] = len(lines)
        write_lines(out / f"{split}.txt", lines)
        report["files"][f"{split}.txt"] = md5sum(out / f"{split}.txt")
        if split in attributes:
            records = attributes[split][:len(lines)]
            name = f"{split}.attributes.jsonl"
            write_lines(out / name, (json.dumps(r, sort_keys=True) for r in records))
            report["files"][name] = md5sum(out / name)
        report["splits"][split] = entry
        log.info("%s: %d lines -> %s", split, len(lines), out / f"{split}.txt")
    atomic_write_json(out / "prepare.json", report)
    return report
