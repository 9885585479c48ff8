"""Conditional tasks on the Snakemake DAG: the configs config/{wp,cnndm,quora,cvae}.yaml plan the
right jobs (jsonl data, one train per (dataset, model, seed) that runs, Table 2 / 9), a config mixing
sentence and conditional datasets routes each table, human row and analysis to its own datasets,
invalid pairings fail `snakemake -n` naming the key, and the tokenizer trains on a jsonl data dir."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from della.cli import main as della_cli
from della.config import ConfigError, dataset_models
from della.data.tokenizer import load_tokenizer, training_texts
from tests.conftest import REPO, snakemake
from tests.test_workflow import job_stats, validated, write_config

TINY_SIZES = {"train": 20, "valid": 5, "test": 5}
SENTENCE_ONLY = {"prepare_data", "human_metrics", "human_reference_table", "interpolation", "table1"}


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())


def dry_run(workdir: Path, config: Path) -> str:
    proc = snakemake(workdir, "-n", "-p", "--cores", "1", "--configfile", str(config), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    return proc.stdout


def trained_runs(stdout: str, experiment: str) -> set[tuple[str, str]]:
    """(dataset, model) of every planned train job's run.json."""
    return set(re.findall(rf"output: results/{experiment}/runs/([^/]+)/([^/]+)/seed\d+/run\.json", stdout))


@pytest.mark.parametrize("name, table", [("wp", "table2"), ("cnndm", "table2"), ("quora", "table9")])
def test_real_subset_configs_plan_jsonl_data_their_runs_and_table(name, table, shared_data, tmp_path):
    cfg = load(name)
    stdout = dry_run(tmp_path, REPO / "config" / f"{name}.yaml")
    jobs = job_stats(stdout)
    assert jobs["prepare_conditional_data"] == 1 and jobs["tokenizer"] == 1
    assert jobs["train"] == jobs["evaluate"] == jobs["generate"] == jobs["text_metrics"] == len(cfg["models"])
    assert jobs[table] == jobs["table7"] == 1 and not SENTENCE_ONLY & set(jobs)
    assert f"output: results/{name}/data/{name}/train.jsonl, results/{name}/data/{name}/valid.jsonl" in stdout
    assert "--source jsonl --path " in stdout and f"shared/data/{name} --truncation-side right" in stdout
    assert f"--references results/{name}/data/{name}/test.jsonl" in stdout
    assert f"--sources results/{name}/data/{name}/test.jsonl" in stdout  # the metrics' conditional task
    assert f"--table {table} --datasets {name} --models {','.join(cfg['models'])}" in stdout
    kind = cfg["backbone"]["kind"]
    assert trained_runs(stdout, name) == {(name, model) for model in cfg["models"]}
    assert ("bart" in cfg["models"]) == (kind == "bart")  # the plain baseline of the backbone: Bart-base or GPT-2


def test_cvae_config_plans_gpt2_and_bart_rows_each_on_its_dataset(tmp_path):
    cfg = validated(load("cvae"))
    stdout = dry_run(tmp_path, REPO / "config" / "cvae.yaml")
    jobs = job_stats(stdout)
    expected = {(dataset, model) for dataset in cfg["datasets"] for model in dataset_models(cfg, dataset)}
    assert trained_runs(stdout, "cvae") == expected and len(expected) == 10
    assert jobs["train"] == jobs["text_metrics"] == 10
    assert jobs["prepare_conditional_data"] == jobs["tokenizer"] == 2
    assert jobs["table2"] == jobs["table7"] == 1 and not SENTENCE_ONLY & set(jobs)
    assert "--source synthetic-conditional --seed 0 --n-train 2000" in stdout
    assert "--metrics bleu,rouge,bertscore,self_bleu,dist,js" in stdout
    bart_models = {m for m, entry in cfg["models"].items() if entry["backbone"].get("kind") == "bart"}
    assert bart_models == set(cfg["datasets"]["synthetic-bart"]["models"])


MIXED = {
    "datasets": {
        "sentences": {"source": "synthetic", "sizes": TINY_SIZES, "models": ["gpt2", "optimus", "della"]},
        "prompts": {"source": "synthetic-conditional", "sizes": TINY_SIZES, "models": ["gpt2", "della", "bart"]},
    },
    "models": {"gpt2": {"model": "gpt2"}, "optimus": {"model": "optimus"}, "della": {"model": "della"},
               "bart": {"model": "bart", "backbone": {"kind": "bart"}}},
    "backbone": {"n_positions": 72},  # Optimus's memory slot takes one position beyond train.max_length
    "tables": {"names": ["table1", "table2"]},
}


def test_a_mixed_config_routes_tables_human_rows_and_analyses_by_task(tmp_path):
    stdout = dry_run(tmp_path, write_config(tmp_path, MIXED))
    jobs = job_stats(stdout)
    assert trained_runs(stdout, "config") == {("sentences", "gpt2"), ("sentences", "optimus"), ("sentences", "della"),
                                              ("prompts", "gpt2"), ("prompts", "della"), ("prompts", "bart")}
    assert jobs["prepare_data"] == jobs["prepare_conditional_data"] == 1
    assert jobs["human_metrics"] == 1  # the sentence dataset's Human row only
    assert jobs["interpolation"] == 2  # Fig. 3 of optimus and della on sentences
    assert jobs["table1"] == jobs["table2"] == jobs["table7"] == 1
    assert "--table table1 --datasets sentences --models gpt2,optimus,della " in stdout
    assert "--table table2 --datasets prompts --models gpt2,della,bart " in stdout
    # Table 7: every dataset, the sentence ones first, as the paper lists them
    assert "--data results/config/data/sentences results/config/data/prompts --tokenizer" in stdout
    assert "--metrics bleu,self_bleu,dist,js,cnd,mauve --mauve-encoder" in stdout  # sentences: text_metrics
    assert ("--metrics bleu,rouge,bertscore,self_bleu,dist,js --sources results/config/data/prompts/test.jsonl "
            "--bertscore-model minilm") in stdout
    assert "human/prompts" not in stdout and "figures/prompts/della/seed0/interpolation" not in stdout


def _change(path: list[str], value):
    def apply(cfg):
        node = cfg
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return apply


@pytest.mark.parametrize("change, message", [
    # Optimus has no CVAE: a conditional dataset running every model fails, naming the model and the dataset
    (_change(["datasets", "prompts", "models"], None),
     "models.optimus: model 'optimus' has no conditional version, but dataset 'prompts' is a conditional task "
     "(datasets.prompts.source); list the models that run on it in datasets.prompts.models"),
    # BART needs a conditional task
    (_change(["datasets", "sentences", "models"], None),
     "models.bart on dataset 'sentences': backbone.kind = bart needs a conditional task"),
    # pair metrics only where each sample has its own reference
    (_change(["datasets", "sentences", "text_metrics"], ["bleu", "rouge"]),
     "datasets.sentences.text_metrics[1]: 'rouge' scores each sample against its own reference"),
    (_change(["text_metrics"], ["bertscore"]), "text_metrics[0]: 'bertscore' scores each sample"),
    (_change(["datasets", "prompts", "models"], ["della", "vae"]),
     "datasets.prompts.models: ['vae'] not among the config's models"),
    (lambda cfg: cfg["datasets"]["prompts"].update(source="synthetic", models=["gpt2"]),
     "tables.names[1]: table2 renders conditional datasets"),
])
def test_invalid_pairings_fail_the_dry_run_naming_the_key(change, message, tmp_path):
    cfg = copy.deepcopy(MIXED)
    change(cfg)
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(write_config(tmp_path, cfg)), timeout=300)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_pair_metrics_are_allowed_on_a_conditional_dataset_only(tmp_path):
    cfg = copy.deepcopy(MIXED)
    cfg["datasets"]["prompts"]["text_metrics"] = ["rouge", {"name": "bertscore", "optional": True}]
    stdout = dry_run(tmp_path, write_config(tmp_path, cfg))
    assert "--metrics rouge,bertscore --optional bertscore --sources results/config/data/prompts/test.jsonl" in stdout


@pytest.mark.parametrize("change, message", [
    (_change(["datasets", "sentences", "wp_preprocess"], True), "False was expected"),
    (_change(["datasets", "sentences", "max_source_tokens"], 20), "None was expected"),
    (_change(["datasets", "prompts", "source_field"], "prompt"), "'source' was expected"),
    (_change(["datasets", "prompts", "truncation_side"], "middle"), "'middle' is not one of"),
    (_change(["datasets", "wp"], {"source": "jsonl"}), "None is not of type 'string'"),
    (_change(["backbone", "kind"], "t5"), "'t5' is not one of ['gpt2', 'bart']"),
    (_change(["models", "bart", "backbone", "kind"], "t5"), "'t5' is not one of ['gpt2', 'bart']"),
    (_change(["datasets", "prompts", "models"], []), "should be non-empty"),
])
def test_schema_refuses_conditional_keys_where_they_do_nothing(change, message):
    cfg = copy.deepcopy(MIXED)
    change(cfg)
    with pytest.raises(Exception, match=re.escape(message)):
        validated(cfg)


def test_dataset_models_keep_the_order_of_models():
    cfg = validated(copy.deepcopy(MIXED))
    cfg["datasets"]["prompts"]["models"] = ["bart", "gpt2"]
    assert dataset_models(cfg, "prompts") == ["gpt2", "bart"]  # the table rows follow `models`
    cfg["datasets"]["prompts"]["models"] = None
    assert dataset_models(cfg, "prompts") == ["gpt2", "optimus", "della", "bart"]
    cfg["datasets"]["prompts"]["models"] = ["gpt-2"]
    with pytest.raises(ConfigError, match=re.escape("datasets.prompts.models: ['gpt-2']")):
        dataset_models(cfg, "prompts")


# ---------------------------------------------------------------------------------------------
# The tokenizer on a conditional data dir


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("pairs") / "data"
    della_cli(["prepare-data", "--source", "synthetic-conditional", "--n-train", "200", "--n-valid", "10",
               "--n-test", "10", "--out", str(data)])
    return data


def test_tokenizer_trains_on_the_sources_and_targets_of_train_jsonl(pairs_dir, tmp_path):
    della_cli(["tokenizer", "--data", str(pairs_dir), "--vocab-size", "400", "--out", str(tmp_path / "tok")])
    # the same texts as lines of a sentence dataset: the same BPE, byte for byte
    pairs = [json.loads(line) for line in (pairs_dir / "train.jsonl").read_text().splitlines()]
    lines = tmp_path / "lines"
    lines.mkdir()
    (lines / "train.txt").write_text("".join(f"{p['source']}\n{p['target']}\n" for p in pairs))
    della_cli(["tokenizer", "--data", str(lines), "--vocab-size", "400", "--out", str(tmp_path / "tok-lines")])
    assert (tmp_path / "tok" / "tokenizer.json").read_bytes() == (tmp_path / "tok-lines" / "tokenizer.json").read_bytes()
    info = json.loads((tmp_path / "tok" / "tokenizer-info.json").read_text())
    assert info["train_file"] == str(pairs_dir / "train.jsonl") and info["train_fields"] == ["source", "target"]
    tok = load_tokenizer(tmp_path / "tok")
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)  # <pad> <s> </s>, as on sentences
    assert tok.decode(tok.encode(pairs[0]["source"])) == pairs[0]["source"]


def test_tokenizer_names_a_jsonl_dir_that_prepare_data_did_not_write(pairs_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "train.jsonl").write_bytes((pairs_dir / "train.jsonl").read_bytes())
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(bare))}/train.txt: no such file, and "
                       f".* does not mark .* as a conditional dataset"):
        training_texts(bare)
