"""Reading sample/reference/source files, and the one documented treatment of bad lines.

File formats: a `.jsonl` file holds one JSON value per line, either a string or an object whose
field is `text` (samples), `target` (references) or `source` (sources), as in
../shared/data/<task>/test.jsonl; any other file holds one text per line. Bytes are decoded as
strict UTF-8, lines are split on "\\n" only and stripped of surrounding whitespace.

Hygiene: an unreadable line (not UTF-8, bad JSON, missing field), a file without any non-empty
line and mismatched counts for paired inputs raise `InputError` naming the file and line. Empty
lines follow the `empty` policy: keep (counted), drop (counted; for paired inputs the whole pair)
or error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

JSONL_FIELDS = {"samples": "text", "references": "target", "sources": "source"}


class InputError(ValueError):
    """Bad input; the message names the file (or argument) and the line."""


@dataclass
class TextSet:
    """The texts of one input after hygiene, with the counts the JSON reports."""

    role: str  # samples | references | sources
    origin: str  # file path, or "<samples argument>" for texts passed in Python
    texts: list[str]
    n_lines: int  # lines read, before dropping
    n_empty: int  # empty lines among them
    n_dropped: int = 0

    def __len__(self) -> int:
        return len(self.texts)


def read_texts(path: str | Path, role: str) -> TextSet:
    """Read one input file (see the module docstring for the format)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; --{role} takes a file with one text per line")
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final newline ends the last line; it does not start a new one
    if lines and lines[0].startswith(b"\xef\xbb\xbf"):
        lines[0] = lines[0][3:]  # UTF-8 byte-order mark
    field = JSONL_FIELDS[role] if path.suffix == ".jsonl" else None
    texts = [_decode(raw, path, number, field) for number, raw in enumerate(lines, 1)]
    return _text_set(role, str(path), texts)


def from_strings(texts: Sequence[str], role: str) -> TextSet:
    """Wrap texts passed in Python; each must be a str."""
    for number, text in enumerate(texts, 1):
        if not isinstance(text, str):
            raise InputError(f"<{role} argument>:{number}: expected str, got {type(text).__name__}")
    return _text_set(role, f"<{role} argument>", [t.strip() for t in texts])


def _decode(raw: bytes, path: Path, number: int, field: str | None) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}:{number}: not valid UTF-8 (byte {raw[err.start]:#04x} at "
                         f"column {err.start + 1})") from None
    if field is None:
        return text.strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{number}: not a JSON line ({err.msg})") from None
    if isinstance(value, dict):
        if field not in value:
            raise InputError(f"{path}:{number}: JSON object has no {field!r} field "
                             f"(has {sorted(value)})")
        value = value[field]
    if not isinstance(value, str):
        raise InputError(f"{path}:{number}: expected a string or an object with a {field!r} "
                         f"string, got {type(value).__name__}")
    return value.strip()


def _text_set(role: str, origin: str, texts: list[str]) -> TextSet:
    if not any(texts):
        raise InputError(f"{origin}: no non-empty line ({len(texts)} lines)")
    return TextSet(role, origin, texts, len(texts), sum(1 for t in texts if not t))


def check_line_counts(sets: list[TextSet], paired: bool) -> None:
    """InputError unless the sets aligned with the samples (`sets[0]`) have as many lines: sources
    always, references with `paired`."""
    for other in sets[1:]:
        if (paired or other.role == "sources") and len(other) != len(sets[0]):
            raise InputError(f"{sets[0].origin} has {len(sets[0])} lines but {other.origin} "
                             f"has {len(other)}: paired inputs need one line per sample")


def apply_empty_policy(sets: list[TextSet], policy: str, paired: bool) -> None:
    """Apply `policy` to empty lines in place, on sets whose line counts check_line_counts passed.

    `drop` removes a whole pair (with its source) when its sample or its reference is empty
    (`paired`); an empty source alone is kept.
    """
    for text_set in sets:
        if policy == "error" and text_set.n_empty and text_set.role != "sources":
            line = text_set.texts.index("") + 1
            raise InputError(f"{text_set.origin}:{line}: empty line ({text_set.n_empty} in all; "
                             f"use empty=keep or empty=drop to accept them)")
    if policy != "drop":
        return
    scored = [s for s in sets if s.role != "sources"]
    if paired:
        keep = [all(s.texts[i] for s in scored) for i in range(len(sets[0]))]
        masks = [keep] * len(sets)
    else:  # references independently; sources follow their samples
        masks = [[bool(t) for t in (sets[0] if s.role == "sources" else s).texts] for s in sets]
    for text_set, mask in zip(sets, masks):
        text_set.texts = [t for t, k in zip(text_set.texts, mask) if k]
        text_set.n_dropped = len(mask) - len(text_set.texts)
        if not text_set.texts:
            raise InputError(f"{text_set.origin}: nothing left after dropping empty lines")
