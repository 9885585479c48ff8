"""The shipped human reference rows (metrics/reference/human.csv) and the workflow's human row."""

from __future__ import annotations

import csv

import pytest
import yaml

from metrics.reference.human import CSV_PATH, DATASETS, METRICS, reference_rows
from tests.conftest import REPO, snakemake


def shipped_rows() -> list[dict]:
    with open(CSV_PATH, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_csv_has_every_metric_of_every_dataset_and_only_numbers():
    rows = shipped_rows()
    for dataset in DATASETS:
        keys = {row["metric"] for row in rows if row["dataset"] == dataset}
        assert set(METRICS) <= keys, dataset
    for row in rows:
        assert row["value"] == "" or float(row["value"]) == float(row["value"])
        assert int(row["n_samples"]) == 200 and int(row["n_references"]) > 0


def test_one_dataset_recomputed_equals_the_shipped_rows(shared_data):
    ngram = ("bleu", "self_bleu", "dist", "js", "cnd")  # MAUVE's encoder pass is left to the script
    fresh = {row["metric"]: row for row in reference_rows("snli", shared_data, ngram)}
    shipped = {row["metric"]: row for row in shipped_rows() if row["dataset"] == "snli"}
    for key, row in fresh.items():
        assert float(shipped[key]["value"]) == pytest.approx(row["value"], abs=1e-12), key
        assert shipped[key]["signature"].split("|della-bench")[0] == \
            row["signature"].split("|della-bench")[0]


def test_human_text_is_scored_better_than_a_degenerate_sample(shared_data):
    """Sanity of the reference row: the same number of copies of one line is far worse."""
    import metrics

    human = {row["metric"]: row["value"] for row in reference_rows("snli", shared_data,
                                                                   ("self_bleu", "dist", "cnd"))}
    line = (shared_data / "snli" / "valid.txt").read_text(encoding="utf-8").split("\n")[0]
    copies = metrics.compute(["self_bleu", "dist", "cnd"], [line] * 200,
                             references=str(shared_data / "snli" / "test.txt"))["metrics"]
    assert copies["self_bleu"]["value"] > human["self_bleu"]
    assert copies["dist"]["value"] < human["dist"]
    assert copies["cnd"]["value"] > human["cnd"]


@pytest.mark.parametrize("text_metrics,message", [
    ("[bleu, distinct]", "unknown text metric 'distinct'. Did you mean 'dist'?"),
    ("[bleu, rouge]", "'rouge' scores each sample against its own reference"),
])
def test_a_bad_text_metric_fails_the_dry_run_naming_it(tmp_path, text_metrics, message):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["text_metrics"] = yaml.safe_load(text_metrics)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "c.yaml"), timeout=300)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout


def test_the_dry_run_plans_the_human_row_with_optional_metrics(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["text_metrics"] = ["bleu", {"name": "mauve", "optional": True}]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, "-n", "-p", "--configfile", str(tmp_path / "c.yaml"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n_samples = config["generate"]["n_samples"]  # experiment "c": the config file's stem
    assert ("--samples results/c/data/synthetic/valid.txt --references results/c/data/synthetic/test.txt"
            f" --max-samples {n_samples} --metrics bleu,mauve --optional mauve") in proc.stdout
    assert "results/c/human/synthetic/metrics.json" in proc.stdout
