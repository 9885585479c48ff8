"""Conditional tasks (source -> target): reading, validation, preprocessing and caps.

Input: JSON lines, one `{"source": str, "target": str}` object per line (other fields are
ignored, blank lines skipped), the layout of ../shared/data/{wp,cnndm,quora}; or a Hugging Face
dataset with a source and a target column (`--source hf-conditional --source-field article
--target-field highlights`). Errors name the file and line (or split and row): invalid JSON, not
an object, a missing or non-string field, an empty source or target.

Output of `prepare-data --source jsonl | hf-conditional | synthetic-conditional`: `{split}.jsonl` with exactly
`source` and `target` per line (JSON lines, not one text file per side, because WritingPrompts
stories keep their paragraph breaks), `{split}.attributes.jsonl` for the synthetic task, and
`prepare.json` with `"task": "conditional"`, the preprocessing, the caps, per-split counts and
the md5 of every file. Steps, in this order, per pair:

1. strip both fields;
2. `--wp-preprocess` (the official WritingPrompts code, reference §5): `<newline>` becomes a line
   break in both fields, and a pair is kept only if its source and target together have fewer
   than 700 whitespace-separated words;
3. `--max-source-tokens` / `--max-target-tokens`: truncate each side to that many whitespace
   tokens (the tokenizer does not exist yet at this step; a model-level BPE cap is the
   backbone's position limit), keeping the first tokens (`--truncation-side right`) or the last
   (`left`); the whitespace between kept tokens is kept as it was;
4. `--max-train-lines` / `--max-eval-lines`: keep the first N pairs of the split.

For training, `encode_pairs` lays a pair out as the official GPT-2 CVAE does (source + </s> +
target + </s>), or as BART reads it, with the condition (the source as the condition encoder
reads it) and the target's start, before which nothing enters the loss.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from della.config import CONDITIONAL_SOURCES
from della.data import synthetic
from della.data.corpus import clear_prepared
from della.io import atomic_write_json, md5sum, write_lines

FIELDS = ("source", "target")
WP_MAX_PAIR_WORDS = 700  # official: keep a pair iff words(source) + words(target) < 700
SIDES = ("right", "left")  # which end truncation cuts off
_TOKEN = re.compile(r"\S+")


@dataclass(frozen=True)
class Pair:
    source: str
    target: str
    line: int  # 1-based line of the input file (or index of the generated example)


@dataclass(frozen=True)
class Caps:
    max_source_tokens: int | None = None
    max_target_tokens: int | None = None
    truncation_side: str = "right"
    wp_preprocess: bool = False

    def __post_init__(self):
        if self.truncation_side not in SIDES:
            raise ValueError(f"--truncation-side: expected one of {SIDES}, got {self.truncation_side!r}")
        for name in ("max_source_tokens", "max_target_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")


def parse_pair(line: str, path: Path, number: int) -> Pair:
    """Line `number` (1-based) of `path` -> Pair."""
    where = f"{path}:{number}"
    try:
        record = json.loads(line)
    except ValueError as err:
        raise ValueError(f"{where}: not valid JSON: {err}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with 'source' and 'target', got {type(record).__name__}")
    return pair_from_record(record, dict(zip(FIELDS, FIELDS)), where, number)


def pair_from_record(record: dict[str, Any], fields: dict[str, str], where: str, number: int) -> Pair:
    """fields: role (source, target) -> the record's key holding it."""
    values = []
    for role, name in fields.items():
        if name not in record:
            raise ValueError(f"{where}: missing field {name!r} (has: {sorted(record)})")
        value = record[name]
        if not isinstance(value, str):
            raise ValueError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise ValueError(f"{where}: empty {role}" + (f" (field {name!r})" if name != role else ""))
        values.append(value.strip())
    return Pair(*values, line=number)


def read_pairs(path: str | Path) -> list[Pair]:
    """Every pair of a JSONL file (validated, stripped); raises if the file holds none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    pairs = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a leading BOM is fine
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at column "
                                 f"{err.start + 1}); re-encode the file as UTF-8") from None
            if line.strip():
                pairs.append(parse_pair(line, path, number))
    if not pairs:
        raise ValueError(f"{path}: no source/target pairs")
    return pairs


def read_hf_pairs(path: str, fields: dict[str, str], config_name: str | None) -> dict[str, list[Pair]]:
    """Every split's pairs of a Hugging Face dataset (hub id or local directory); line = row (1-based)."""
    import datasets

    from della.data.hf import SPLIT_NAMES, _open

    ds = _open(path, config_name)
    if not isinstance(ds, datasets.DatasetDict):
        raise ValueError(f"--path {path}: a dataset without splits; need train, validation and test")
    splits = {}
    for split, names in SPLIT_NAMES.items():
        name = next((n for n in names if n in ds), None)
        if name is None:
            raise ValueError(f"--path {path}: no {'/'.join(names)} split; available: {sorted(ds)}")
        table = ds[name]
        missing = [f"--{role}-field {field!r}" for role, field in fields.items() if field not in table.column_names]
        if missing:
            raise ValueError(f"--path {path} split {name}: no {', '.join(missing)}; columns: {table.column_names}")
        columns = {field: table[field] for field in fields.values()}
        splits[split] = [pair_from_record({f: columns[f][row] for f in columns}, fields,
                                          f"--path {path} split {name} row {row + 1}", row + 1)
                         for row in range(len(table))]
    return splits


def wp_preprocess(pair: Pair) -> Pair | None:
    """The official WritingPrompts preprocessing; None when the pair is too long to keep."""
    source, target = (text.replace("<newline>", "\n") for text in (pair.source, pair.target))
    if len(source.split()) + len(target.split()) >= WP_MAX_PAIR_WORDS:
        return None
    return Pair(source, target, pair.line)


def truncate_tokens(text: str, limit: int | None, side: str) -> str:
    """At most `limit` whitespace tokens: the first ones (side 'right') or the last ('left')."""
    if limit is None:
        return text
    spans = [m.span() for m in _TOKEN.finditer(text)]
    if len(spans) <= limit:
        return text
    if side == "right":
        return text[:spans[limit - 1][1]]
    return text[spans[-limit][0]:]


def apply_caps(pairs: list[Pair], caps: Caps, max_lines: int | None) -> tuple[list[Pair], dict[str, Any]]:
    """Preprocess, truncate and cap one split; returns the kept pairs and their counts."""
    # JSONL: every non-blank line is a pair or an error, so the lines before the last pair that hold none were blank
    report: dict[str, Any] = {"pairs_read": len(pairs), "blank_lines_skipped": pairs[-1].line - len(pairs) if pairs else 0}
    if caps.wp_preprocess:
        kept = [(pair, wp_preprocess(pair)) for pair in pairs]
        dropped = [pair.line for pair, new in kept if new is None]
        pairs = [new for _, new in kept if new is not None]
        report.update(wp_too_long_dropped=len(dropped), wp_too_long_lines=dropped[:1000])
    truncated = {"source": 0, "target": 0}
    capped = []
    for pair in pairs:
        source = truncate_tokens(pair.source, caps.max_source_tokens, caps.truncation_side)
        target = truncate_tokens(pair.target, caps.max_target_tokens, caps.truncation_side)
        truncated["source"] += source != pair.source
        truncated["target"] += target != pair.target
        capped.append(Pair(source, target, pair.line))
    report.update(sources_truncated=truncated["source"], targets_truncated=truncated["target"])
    report["capped_from"] = len(capped) if max_lines is not None and len(capped) > max_lines else None
    capped = capped[:max_lines] if max_lines is not None else capped
    report["pairs_written"] = len(capped)
    return capped, report


def write_conditional(pairs: dict[str, list[Pair]], attributes: dict[str, list[dict[str, Any]]], out: Path,
                      provenance: dict[str, Any], caps: Caps, max_lines: dict[str, int | None],
                      inputs: dict[str, str]) -> dict[str, Any]:
    """Cap every split, clear what an earlier preparation left in `out`, write every split, then
    prepare.json (last, so it marks a complete set)."""
    report: dict[str, Any] = {**provenance, "task": "conditional", "format": "jsonl",
                              "preprocessing": {"wp": caps.wp_preprocess,
                                                "wp_max_pair_words": WP_MAX_PAIR_WORDS if caps.wp_preprocess else None},
                              "caps": {"max_train_lines": max_lines["train"], "max_eval_lines": max_lines["valid"],
                                       "max_source_tokens": caps.max_source_tokens,
                                       "max_target_tokens": caps.max_target_tokens,
                                       "truncation_side": caps.truncation_side, "token_unit": "whitespace"},
                              "splits": {}, "files": {}}
    capped = {split: apply_caps(split_pairs, caps, max_lines[split]) for split, split_pairs in pairs.items()}
    for split, (kept, entry) in capped.items():
        if not kept:
            raise ValueError(f"{inputs[split]}: split {split!r} has no pair left after preprocessing "
                             f"({entry['pairs_read']} read)")
    clear_prepared(out)
    for split, (kept, entry) in capped.items():
        _write_jsonl(out / f"{split}.jsonl", ({"source": p.source, "target": p.target} for p in kept))
        report["files"][f"{split}.jsonl"] = md5sum(out / f"{split}.jsonl")
        if split in attributes:
            name = f"{split}.attributes.jsonl"
            _write_jsonl(out / name, (attributes[split][p.line - 1] for p in kept))
            report["files"][name] = md5sum(out / name)
        report["splits"][split] = {"input": inputs[split], **entry}
    atomic_write_json(out / "prepare.json", report)
    return report


def _write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    write_lines(path, (json.dumps(r, ensure_ascii=False, sort_keys=True) for r in records))


# --- token sequences of a CVAE (reference §5; BART: §5.1) ------------------------------------------
LAYOUTS = ("gpt2", "bart")  # the backbone kind the sequences are laid out for


def encode_pairs(pairs: list[Pair], tokenizer, max_length: int, path: str, layout: str = "gpt2",
                 max_source_length: int | None = None):
    """Pairs -> an EncodedSplit with the condition of every example.

    gpt2 (the official CVAE): decoder sequence source + </s> + target + </s>, no <s>; the
    condition is its prefix source + </s>; the target starts after it.
    bart: decoder sequence </s> <s> target </s> (HF's decoder start, then BART's labels); the
    condition is the encoder input <s> source </s>; the target starts at index 2.
    A target too long for max_length keeps its first tokens and its </s> (counted). A source that
    leaves no room for one target token (gpt2) or exceeds max_source_length (bart: the encoder's
    positions) is an error naming its line.
    """
    from della.batches import EncodedSplit

    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}; expected one of {LAYOUTS}")
    out = EncodedSplit(path, [], sources=[], target_starts=[])
    sources = tokenizer.encode_batch([p.source for p in pairs])
    targets = tokenizer.encode_batch([p.target for p in pairs])
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    for pair, src, tgt in zip(pairs, sources, targets):
        if layout == "gpt2":
            condition, prefix = [*src, eos], [*src, eos]
            if len(prefix) + 2 > max_length:
                raise ValueError(f"{path}:{pair.line}: source of {len(src)} tokens (+ </s>) leaves no room for a "
                                 f"target within train.max_length {max_length}; cap it (max_source_tokens)")
        else:
            condition, prefix = [bos, *src, eos], [eos, bos]
            if max_source_length is not None and len(condition) > max_source_length:
                raise ValueError(f"{path}:{pair.line}: source of {len(condition)} tokens (with <s> and </s>) exceeds "
                                 f"the encoder's {max_source_length} positions; cap it (max_source_tokens)")
        seq = [*prefix, *tgt, eos]
        if len(seq) > max_length:
            seq = seq[: max_length - 1] + [eos]
            out.truncated_lines.append(pair.line)
        out.sequences.append(seq)
        out.sources.append(condition)
        out.target_starts.append(len(prefix))
    return out


# --- prepare-data hook ---------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("conditional tasks (--source jsonl | hf-conditional | synthetic-conditional)")
    g.add_argument("--source-field", default=None, help="hf-conditional: the column of the source (default source)")
    g.add_argument("--target-field", default=None, help="hf-conditional: the column of the target (default target)")
    g.add_argument("--wp-preprocess", action="store_true",
                   help="official WritingPrompts preprocessing: <newline> -> line break, keep pairs under 700 words")
    g.add_argument("--max-source-tokens", type=int, default=None, help="truncate sources to N whitespace tokens")
    g.add_argument("--max-target-tokens", type=int, default=None, help="truncate targets to N whitespace tokens")
    g.add_argument("--truncation-side", choices=SIDES, default=None,
                   help="right: keep the first tokens (default); left: keep the last")


def check_args(args: argparse.Namespace) -> None:
    given = [f"--{name.replace('_', '-')}" for name in ("max_source_tokens", "max_target_tokens", "truncation_side")
             if getattr(args, name) is not None] + (["--wp-preprocess"] if args.wp_preprocess else [])
    if args.source not in CONDITIONAL_SOURCES and given:
        raise ValueError(f"{', '.join(given)}: only for --source {' | '.join(CONDITIONAL_SOURCES)}")
    if args.source != "hf-conditional" and (args.source_field or args.target_field):
        raise ValueError("--source-field/--target-field: only for --source hf-conditional")


def run(args: argparse.Namespace, provenance: dict[str, Any], sizes: dict[str, int]) -> dict[str, Any]:
    """`prepare-data` for a conditional source; `sizes` are the synthetic split sizes."""
    caps = Caps(args.max_source_tokens, args.max_target_tokens, args.truncation_side or "right", args.wp_preprocess)
    attributes: dict[str, list[dict[str, Any]]] = {}
    if args.source == "jsonl":
        inputs = {split: str(Path(args.path) / f"{split}.jsonl") for split in sizes}
        pairs = {split: read_pairs(path) for split, path in inputs.items()}
    elif args.source == "hf-conditional":
        fields = {"source": args.source_field or "source", "target": args.target_field or "target"}
        pairs = read_hf_pairs(args.path, fields, args.hf_config)
        inputs = {split: f"{args.path}[{split}]" for split in pairs}
        provenance = {**provenance, "fields": fields, "hf_config": args.hf_config}
    else:
        corpus = synthetic.generate_conditional_corpus(sizes, seed=args.seed or 0)
        inputs = {split: f"synthetic-conditional[{split}]" for split in sizes}
        pairs = {split: [Pair(ex.source, ex.target, n) for n, ex in enumerate(examples, start=1)]
                 for split, examples in corpus.items()}
        attributes = {split: [ex.attributes for ex in examples] for split, examples in corpus.items()}
    max_lines = {"train": args.max_train_lines, "valid": args.max_eval_lines, "test": args.max_eval_lines}
    return write_conditional(pairs, attributes, Path(args.out), provenance, caps, max_lines, inputs)
