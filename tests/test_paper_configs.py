"""The table configs plan in full: `snakemake -n` on config/table{4,5,8}.yaml and on every paper-scale
config (config/paper/*.yaml), offline, and the paper-scale ones ask for what the paper ran."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from della.tables import TABLES
from tests.conftest import REPO, snakemake

SMALL = ["table4", "table5", "table8"]
PAPER = sorted(p.stem for p in (REPO / "config" / "paper").glob("*.yaml"))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def job_counts(stdout: str) -> dict[str, int]:
    """The `Job stats` table of a dry run: rule -> jobs."""
    stats = stdout[stdout.index("Job stats:"):]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.MULTILINE)}


def dry_run(config: Path, workdir: Path, monkeypatch) -> dict[str, int]:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")  # planning must not need the hub (models or datasets)
    proc = snakemake(workdir, "-n", "--configfile", str(config), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return job_counts(proc.stdout + proc.stderr)


def test_paper_configs_exist_for_tables_1_4_5_8():
    assert PAPER == ["table1", "table4", "table5", "table8"]


@pytest.mark.parametrize("config", [f"paper/{name}" for name in PAPER] + SMALL)
def test_dry_run_plans_every_run_and_the_configs_table(config, tmp_path, monkeypatch):
    cfg = load(REPO / "config" / f"{config}.yaml")
    runs = len(cfg["datasets"]) * len(cfg["models"]) * len(cfg["seeds"])
    jobs = dry_run(REPO / "config" / f"{config}.yaml", tmp_path, monkeypatch)
    assert jobs["train"] == jobs["evaluate"] == jobs["generate"] == runs
    assert jobs["prepare_data"] == len(cfg["datasets"])  # nothing prepared or downloaded yet
    for table in cfg["tables"]["names"]:
        assert jobs[table] == 1
    unasked = {"table1", "table4", "table5", "table8"} - set(cfg["tables"]["names"])
    assert not unasked & set(jobs)  # only the config's tables are rendered


@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_ask_for_the_papers_scale(name):
    cfg = load(REPO / "config" / "paper" / f"{name}.yaml")
    assert len(cfg["seeds"]) >= 3
    assert cfg["backbone"]["pretrained"] == "gpt2"
    assert all(ds["tokenizer"]["pretrained"] == "gpt2" for ds in cfg["datasets"].values())
    assert all(ds["source"] == "hf" for ds in cfg["datasets"].values())
    assert cfg["train"]["device"] == "cuda" and cfg["resources"]["train"]["gpu"] >= 1
    assert cfg["train"]["batch_size"] in (16, 32) and cfg["train"]["lr"] in (5e-5, 7e-5)
    assert cfg["train"]["cycle_epochs"] == 2
    assert cfg["experiment"] == f"paper-{name}"  # never mixed with the small config's results
    if name in ("table1", "table8"):  # beam search for DELLA, top-k sampling for the baselines
        for entry in cfg["models"].values():
            strategy = entry["generate"]["strategy"]
            assert strategy == ("beam" if entry["model"] == "della" else "sample")
            assert strategy == "beam" or entry["generate"]["top_k"] > 0


def test_every_table_name_the_schema_accepts_has_a_layout_in_della_tables():
    schema = load(REPO / "workflow" / "schemas" / "config.schema.yaml")
    names = schema["properties"]["tables"]["properties"]["names"]["items"]["enum"]
    assert sorted(names) == ["table1", "table4", "table5", "table8"] and set(names) <= set(TABLES)
