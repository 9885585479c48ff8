"""Write metrics/reference/human.csv: the text metrics of human text (the "Human" reference rows).

For PTB, Yahoo and SNLI (../shared/data/<dataset>/), a seeded random `--n-samples` lines of the
validation split are scored as if they were a run's samples, against the whole test split as
references, with the package defaults: exactly what `python -m metrics compute --samples
valid.txt --references test.txt --max-samples N` writes into a metrics JSON. The CSV holds
numbers only (no text of the data), one row per (dataset, metric key):

    python -m metrics.reference.human --data ../shared/data --out metrics/reference/human.csv

`reference_rows(dataset, data_dir, ...)` recomputes the rows of one dataset (the test in
tests/metrics/ does, and compares them with the CSV).
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from della.io import atomic_write_text
from metrics.compute import compute

DATASETS = ("ptb", "yahoo", "snli")
METRICS = ("bleu", "self_bleu", "dist", "js", "cnd", "mauve")
N_SAMPLES = 200  # generate.n_samples of the workflow (schema default and config/ptb.yaml)
SEED = 0
COLUMNS = ("dataset", "metric", "value", "label", "higher_is_better", "display_scale", "decimals",
           "n_samples", "n_references", "sample_seed", "signature")
CSV_PATH = Path(__file__).with_name("human.csv")


def reference_rows(dataset: str, data_dir: Path, metrics: tuple[str, ...] = METRICS,
                   n_samples: int = N_SAMPLES, seed: int = SEED) -> list[dict]:
    """The CSV rows of one dataset: valid (n_samples, seeded) scored against test."""
    folder = Path(data_dir) / dataset
    doc = compute(list(metrics), folder / "valid.txt", folder / "test.txt",
                  max_samples=n_samples, sample_seed=seed)
    inputs = doc["inputs"]
    return [{"dataset": dataset, "metric": key, "value": entry["value"], "label": entry["label"],
             "higher_is_better": entry["higher_is_better"],
             "display_scale": entry["display_scale"], "decimals": entry["decimals"],
             "n_samples": inputs["n_samples"], "n_references": inputs["n_references"],
             "sample_seed": seed, "signature": entry["signature"]}
            for key, entry in doc["metrics"].items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="../shared/data")
    parser.add_argument("--out", type=Path, default=CSV_PATH)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    args = parser.parse_args(argv)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for dataset in args.datasets.split(","):
        writer.writerows(reference_rows(dataset, args.data))
    atomic_write_text(args.out, buffer.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
