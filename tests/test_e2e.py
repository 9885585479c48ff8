"""End to end: the README's first command gives Tables 1 and 2 with real numbers for every model."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml

from della.config import dataset_task
from tests.conftest import REPO, read_table, snakemake
from tests.test_report import check_report

pytestmark = pytest.mark.slow
REPRESENTATION = ("neg_elbo", "kl", "mi", "au")
GENERATION = ("bleu", "cnd", "mauve", "self_bleu", "dist", "js")
CONDITIONAL = ("bleu", "rouge1", "rouge2", "rougeL", "bertscore", "self_bleu", "dist", "js")
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


MODELS = DEFAULT["datasets"]["synthetic"]["models"]  # Table 1's rows


def assert_real_numbers(table: dict[str, dict[str, str]], models: list[str] = MODELS) -> None:
    assert list(table) == models
    for model, row in table.items():
        expected = ("iw_ppl", *GENERATION) + (() if model == "gpt2" else REPRESENTATION)
        for key in expected:
            assert math.isfinite(float(row[key])), (model, key, row[key])
        if model == "gpt2":  # no latent: the table says so instead of inventing a value
            assert all(row[key] == "" and row[f"{key}_n"] == "0" for key in REPRESENTATION)


def test_embedded_default_renders_table1_with_real_numbers(default_dag):
    assert_real_numbers(read_table(default_dag))
    tex = (default_dag / "results/default/tables/table1.tex").read_text()
    assert "\\toprule" in tex and "PPL$\\downarrow$" in tex and "\\textbf{" in tex
    runs = default_dag / "results/default/runs/synthetic"
    for model in MODELS:
        run = json.loads((runs / model / "seed0" / "run.json").read_text())
        assert run["seed"] == 0 and run["provenance"]["versions"]["torch"]
        assert (runs / model / "seed0" / "train-log.jsonl").stat().st_size > 0
    della = json.loads((runs / "della/seed0/eval.json").read_text())["metrics"]
    assert len(della["kl"]["details"]["per_group"]) == 2 and "iw_ppl_official" in della


def test_the_terminal_shows_epoch_progress_and_ends_with_the_table(default_dag):
    printed = (default_dag / "snakemake-output.txt").read_text()
    epochs = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["train"]["epochs"]
    assert f"progress results/default/runs/synthetic/della/seed0: epoch {epochs}/{epochs} done" in printed
    table = (default_dag / "results/default/tables/table1.md").read_text()
    tail = printed[printed.index("table1 of experiment 'default'"):]
    assert table in tail and "results/default/tables/table1.tex" in tail
    assert "snakemake --report results/default/report.html" in tail


def test_rerunning_the_finished_dag_does_nothing(default_dag):
    proc = snakemake(default_dag, "-n", "--cores", "2")
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr


# The default DAG runs every model; on PTB, the models whose path differs: GPT-2 (MAUVE's features
# come from it), Optimus (its memory slot needs n_positions 65) and DELLA. Four more would double the time.
PTB_MODELS = ["gpt2", "optimus", "della"]


def ptb_config(workdir) -> str:
    """config/ptb.yaml running PTB_MODELS, still named ptb.yaml (the experiment is the file's stem)."""
    config = yaml.safe_load((REPO / "config" / "ptb.yaml").read_text())
    assert set(PTB_MODELS) <= set(config["models"])
    config["models"] = {name: config["models"][name] for name in PTB_MODELS}
    path = workdir / "config" / "ptb.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def test_ptb_subset_config_runs_end_to_end(shared_data, tmp_path):
    proc = snakemake(tmp_path, "--cores", "2", "--configfile", ptb_config(tmp_path))
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert_real_numbers(read_table(tmp_path, experiment="ptb"), PTB_MODELS)
    prepared = json.loads((tmp_path / "results/ptb/data/ptb/prepare.json").read_text())
    assert prepared["splits"]["train"]["lines_written"] == 2000


def test_report_holds_the_tables_curves_samples_and_provenance(default_dag):
    check_report(default_dag)


def test_cost_table_has_every_model(default_dag):
    cost = read_table(default_dag, "cost")
    assert list(cost) == list(DEFAULT["models"])


def test_embedded_default_renders_table2_with_real_numbers_for_the_gpt2_and_bart_cvaes(default_dag):
    with open(default_dag / "results/default/tables/table2.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["kind"] == "model"]
    conditional = {name: d for name, d in DEFAULT["datasets"].items() if dataset_task(d) == "conditional"}
    assert [(r["dataset"], r["model"]) for r in rows] == [(d, m) for d, entry in conditional.items()
                                                          for m in entry["models"]]
    for row in rows:
        latent = DEFAULT["models"][row["model"]]["model"] not in ("gpt2", "bart")
        for key in CONDITIONAL + (("kl", "au") if latent else ()):
            assert math.isfinite(float(row[key])), (row["dataset"], row["model"], key, row[key])
        if not latent:
            assert row["kl"] == "" and row["kl_n"] == "0"
    samples = default_dag / "results/default/runs/synthetic-cvae-bart/della-bart/seed0/samples.txt"
    assert len(samples.read_text().splitlines()) == conditional["synthetic-cvae-bart"]["sizes"]["test"]
