"""Fixtures of the metrics tests: real text from ../shared/data when present (skip otherwise)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture
def shared_lines():
    """`shared_lines(dataset, split, n)`: the first n texts of a shared data file, or skip.

    Unconditional sets give their lines; conditional sets (.jsonl) give (source, target) pairs.
    """

    def read(dataset: str, split: str = "test", n: int | None = None):
        for suffix in (".txt", ".jsonl"):
            path = SHARED_DATA / dataset / f"{split}{suffix}"
            if path.is_file():
                lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")[:n]
                if suffix == ".txt":
                    return [line.strip() for line in lines]
                rows = [json.loads(line) for line in lines]
                return [(row["source"], row["target"]) for row in rows]
        pytest.skip(f"shared data {dataset}/{split} not available at {SHARED_DATA}")

    return read
