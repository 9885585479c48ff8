"""Reading and writing one-example-per-line corpora, with validation and atomic writes.

Every text file in `results/<experiment>/data/<dataset>/` is UTF-8, one example per line, no empty lines.
`scan_lines` reads a file and reports what it had to clean (empty lines, stray line breaks);
`read_lines` is the strict reader the training and evaluation code uses. Errors name the file
and, where it applies, the line number (1-based), so `python -m della` can print them as is.
"""

from __future__ import annotations

import codecs
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Characters that `str.splitlines` treats as line boundaries, besides "\n" and "\r\n".
# Inside an example they would split it in two for some readers, so they become spaces.
_LINE_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_BREAKS_TO_SPACE = str.maketrans({c: " " for c in _LINE_BREAKS + "\n"})
SPLITS = ("train", "valid", "test")  # of every prepared dataset
MAX_REPORTED_LINE_NUMBERS = 1000  # prepare.json lists at most this many dropped line numbers


def clean_text(text: str) -> tuple[str, int]:
    """Strip an example and turn any line break inside it into a space.

    Returns the cleaned text and how many line-break characters were replaced.
    """
    n_breaks = sum(text.count(c) for c in _LINE_BREAKS + "\n")
    if n_breaks:
        text = text.translate(_BREAKS_TO_SPACE)
    return text.strip(), n_breaks


@dataclass
class LineScan:
    """What reading one corpus file found: the kept lines and what was cleaned away."""

    path: str
    lines: list[str] = field(default_factory=list)
    lines_read: int = 0  # physical lines (or rows) in the input
    empty_line_numbers: list[int] = field(default_factory=list)  # 1-based, dropped
    line_breaks_replaced: int = 0  # stray "\r", "\u2028", ... turned into spaces

    def add(self, number: int, text: str) -> None:
        """Record input line/row `number` (1-based); keep it unless it is empty after cleaning."""
        self.lines_read += 1
        text, n_breaks = clean_text(text)
        self.line_breaks_replaced += n_breaks
        if text:
            self.lines.append(text)
        else:
            self.empty_line_numbers.append(number)

    def report(self) -> dict[str, Any]:
        """The counts that go into prepare.json (line numbers capped at MAX_REPORTED_LINE_NUMBERS)."""
        return {
            "input": self.path,
            "lines_read": self.lines_read,
            "empty_dropped": len(self.empty_line_numbers),
            "empty_line_numbers": self.empty_line_numbers[:MAX_REPORTED_LINE_NUMBERS],
            "line_breaks_replaced": self.line_breaks_replaced,
        }


def scan_lines(path: str | Path) -> LineScan:
    """Read a UTF-8 text file, one example per line; drop (and count) empty lines.

    Raises FileNotFoundError if the file is missing and ValueError naming the file and line
    if a line is not valid UTF-8. A leading byte-order mark and CRLF line ends are accepted.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if b"\n" not in data and data.count(b"\r") > 1:  # else the whole file would become one example
        raise ValueError(f"{path}: its lines end in \\r alone (classic Mac OS line ends); convert them to "
                         "\\n, e.g. `tr '\\r' '\\n'`")
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":  # the final newline ends the last line
        raw_lines.pop()
    scan = LineScan(path=str(path))
    for number, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{path}:{number}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at column "
                f"{err.start + 1}); re-encode the file as UTF-8"
            ) from None
        scan.add(number, text.removesuffix("\r"))
    return scan


def read_lines(path: str | Path) -> list[str]:
    """The non-empty, stripped lines of a corpus file (validated as in `scan_lines`).

    Raises ValueError if no line is left. Files written by `prepare-data` have no empty
    lines, so for them this is an exact, line-aligned read.
    """
    scan = scan_lines(path)
    if scan.empty_line_numbers:
        log.warning("%s: dropped %d empty line(s), first at line %d", path,
                    len(scan.empty_line_numbers), scan.empty_line_numbers[0])
    if not scan.lines:
        raise ValueError(f"{path}: no non-empty lines")
    return scan.lines


def read_attributes(path: str | Path, n_lines: int | None = None) -> list[dict[str, Any]]:
    """One JSON object per line (`{split}.attributes.jsonl`), aligned with the split's text lines.

    If `n_lines` is given, the number of records must equal it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    records: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
            raise ValueError(f"{path}:{number}: not a JSON object: {err}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    if n_lines is not None and len(records) != n_lines:
        raise ValueError(f"{path}: {len(records)} attribute records for {n_lines} text lines")
    return records


def clear_prepared(out: Path) -> None:
    """Remove what an earlier preparation wrote to `out`: prepare.json first (it marks a complete set,
    so a set interrupted from here on has none), then every split's text, pairs and attributes, so no
    file of another corpus or task stays beside the new one."""
    names = ["prepare.json"] + [f"{split}.{ext}" for split in SPLITS for ext in ("txt", "jsonl", "attributes.jsonl")]
    for name in names:
        (out / name).unlink(missing_ok=True)
