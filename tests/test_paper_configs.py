"""The table configs plan in full: `snakemake -n` on config/table{4,5,8}.yaml and on every paper-scale
config (config/paper/*.yaml, Tables 2 and 9 included), offline, and the paper-scale ones ask for what
the paper ran."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from della.config import dataset_models
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


def validated(cfg: dict) -> dict:
    from snakemake.utils import validate

    validate(cfg, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return cfg


def test_paper_configs_exist_for_tables_1_2_4_5_8_9():
    assert PAPER == ["table1", "table2", "table4", "table5", "table8", "table9"]


@pytest.mark.parametrize("config", [f"paper/{name}" for name in PAPER] + SMALL)
def test_dry_run_plans_every_run_and_the_configs_table(config, tmp_path, monkeypatch):
    cfg = validated(load(REPO / "config" / f"{config}.yaml"))
    runs = sum(len(dataset_models(cfg, dataset)) for dataset in cfg["datasets"]) * len(cfg["seeds"])
    jobs = dry_run(REPO / "config" / f"{config}.yaml", tmp_path, monkeypatch)
    assert jobs["train"] == jobs["evaluate"] == jobs["generate"] == runs
    # nothing prepared or downloaded yet: sentence datasets as .txt, conditional ones as .jsonl
    assert jobs.get("prepare_data", 0) + jobs.get("prepare_conditional_data", 0) == len(cfg["datasets"])
    for table in cfg["tables"]["names"]:
        assert jobs[table] == 1
    unasked = set(TABLE_NAMES) - set(cfg["tables"]["names"])
    assert not unasked & set(jobs)  # only the config's tables are rendered


PRETRAINED = {"gpt2": "gpt2", "bart": "facebook/bart-base"}  # the paper's backbone of each kind


@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_ask_for_the_papers_scale(name):
    cfg = validated(load(REPO / "config" / "paper" / f"{name}.yaml"))
    assert len(cfg["seeds"]) >= 3
    assert cfg["backbone"]["pretrained"] == PRETRAINED[cfg["backbone"]["kind"]]
    for dataset, ds in cfg["datasets"].items():
        assert ds["source"] in ("hf", "hf-conditional")
        for model in dataset_models(cfg, dataset):  # a model entry that changes the kind loads its checkpoint
            override = cfg["models"][model]["backbone"]
            kind = override.get("kind", cfg["backbone"]["kind"])
            assert "kind" not in override or override["pretrained"] == PRETRAINED[kind], model
            assert ds["tokenizer"]["pretrained"] == PRETRAINED[kind], (dataset, model)
    assert cfg["train"]["device"] == "cuda" and cfg["resources"]["train"]["gpu"] >= 1
    for rule, res in cfg["resources"].items():  # else profiles/slurm's default partition, `cpu`
        assert not res.get("gpu") or res.get("slurm_partition"), rule
    assert cfg["train"]["batch_size"] in (16, 32) and cfg["train"]["lr"] in (5e-5, 7e-5)
    assert cfg["train"]["cycle_epochs"] == 2
    assert cfg["experiment"] == f"paper-{name}"  # never mixed with the small config's results
    if name in ("table1", "table8"):  # beam search for DELLA, top-k sampling for the baselines
        for entry in cfg["models"].values():
            strategy = entry["generate"]["strategy"]
            assert strategy == ("beam" if entry["model"] == "della" else "sample")
            assert strategy == "beam" or entry["generate"]["top_k"] > 0
            assert entry["generate"]["repetition_penalty"] == 1.2  # every strategy (reference §7.2)
    if name == "table2":  # WP as Table 1 (beam for DELLA, top-k for the baselines); CNN/DM beam for all
        for model in cfg["datasets"]["cnndm"]["models"]:
            assert cfg["models"][model]["generate"]["strategy"] == "beam"
        for model in cfg["datasets"]["wp"]["models"]:
            entry = cfg["models"][model]
            assert entry["generate"]["strategy"] == ("beam" if entry["model"] == "della" else "sample")
    if name == "table9":  # beam search for every model
        assert cfg["generate"]["strategy"] == "beam"
        assert not any(entry.get("generate") for entry in cfg["models"].values())
    if any(ds["source"] == "hf-conditional" for ds in cfg["datasets"].values()):  # BERTScore: bert-score's
        assert cfg["bertscore_model"] == "roberta-large"  # model for English


TABLE_NAMES = ["table1", "table2", "table4", "table5", "table8", "table9"]


def test_every_table_name_the_schema_accepts_has_a_layout_in_della_tables():
    schema = load(REPO / "workflow" / "schemas" / "config.schema.yaml")
    names = schema["properties"]["tables"]["properties"]["names"]["items"]["enum"]
    assert sorted(names) == TABLE_NAMES and set(names) <= set(TABLES)


def test_the_official_preset_at_gpt2_small_has_the_papers_parameter_count():
    """App. A.1: "The number of parameters for our model is 193,353,984 in the unconditional generation
    setting". The `della-official` entry of config/config.yaml (the official code's departures) on GPT-2
    small with the official vocabulary (50257 + <s>, </s>; reference §1) has exactly that many; the
    paper-text defaults lack its untied LM head (768 x 50259) and 12 attention-pooling vectors (768 each)."""
    import torch

    from della.config import BackboneConfig
    from della.models.base import Vocab, build_model

    official = load(REPO / "config" / "config.yaml")["models"]["della-official"]
    vocab = Vocab(size=50259, bos_id=50257, eos_id=50258, pad_id=50256)
    small = BackboneConfig(n_layer=12, n_embd=768, n_head=12, n_positions=1024)
    counts = {}
    for name, args in (("official", official["args"]), ("default", {})):
        with torch.device("meta"):  # no memory, no initialisation
            model = build_model(official["model"], args, vocab, backbone_config=small)
        counts[name] = sum(p.numel() for p in model.parameters())
    assert counts["official"] == 193_353_984
    assert counts["official"] - counts["default"] == 768 * 50259 + 12 * 768


@pytest.mark.parametrize("name", PAPER)
def test_every_paper_row_a_config_names_is_one_of_the_papers(name):
    """An entry's paper row (its `paper_row`, else its model's paper name) is a row of the paper's
    tables it renders, so no paper row silently goes missing; rows the paper lacks say `false`."""
    from della.models import paper_row
    from della.tables import PAPER_TABLES, paper_values

    cfg = validated(load(REPO / "config" / "paper" / f"{name}.yaml"))
    tables = [t for t in cfg["tables"]["names"] if t in PAPER_TABLES]
    printed = {model for table in tables for _, model, _ in paper_values(table)}
    for entry, spec in cfg["models"].items():
        assert spec["paper_row"] is False or paper_row(spec) in printed, (entry, paper_row(spec))
    assert cfg["tables"]["paper_rows"]
