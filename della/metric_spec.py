"""How a della-side number is shown: declared once where the number is produced (eval.json's
representation metrics, the cost entries of a run), copied into every entry it writes, and read
from there by `aggregate` and the tables. Imports nothing heavy, so the table code can use it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetricSpec:
    label: str
    higher_is_better: bool | None  # None: no better direction (e.g. a parameter count): no arrow, no bold
    decimals: int
    display_scale: float = 1
    signature: str = ""  # how the number is measured (a table footnote); an entry may override it

    def entry(self, value: Any, error: str = "", signature: str | None = None,
              details: dict | None = None, stderr: float | None = None) -> dict[str, Any]:
        """An entry of a metrics JSON; a missing or non-finite value becomes null with an error.
        `stderr`, the value's standard error where the producer estimates one, is kept only
        beside a finite value (a table prints it as value ± stderr)."""
        if not _finite(value):
            value, error = None, error or f"not a finite number: {value!r}"
        out = {"value": value, "higher_is_better": self.higher_is_better, "label": self.label,
               "display_scale": self.display_scale, "decimals": self.decimals,
               "signature": self.signature if signature is None else signature, "details": details or {}}
        if value is None:
            return {**out, "error": error}
        return {**out, "stderr": stderr} if _finite(stderr) else out


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
