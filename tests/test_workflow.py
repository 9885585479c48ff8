"""The Snakemake workflow: DAG shape, config validation, schema <-> dataclasses, profile, env.

Snakemake runs as a subprocess with `-d <tmp>` and `--workflow-profile none` (so neither a
developer's profile nor files in the checkout leak in); see docs: snakemake-notes §1.10.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from della import config as della_config
from della.models import MODELS

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
SECTIONS = {"backbone": della_config.BackboneConfig, "train": della_config.TrainConfig,
            "evaluate": della_config.EvalConfig, "generate": della_config.GenerateConfig}


def snakemake(workdir: Path, *args: str, snakefile: Path = REPO / "Snakefile", timeout: int = 600):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir),
         "--workflow-profile", "none", *args],
        capture_output=True, text=True, timeout=timeout)


def job_stats(output: str) -> dict[str, int]:
    block = output.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.MULTILINE) if m.group(1) != "total"}


def write_config(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def planned_jobs(config: dict) -> dict[str, int]:
    """The jobs a config with MAUVE among its sentence datasets' text metrics plans, derived from its
    datasets (sentence or conditional), the models each runs, its seeds and its tables."""
    seeds = len(config["seeds"])
    runs = {name: [config["models"][m]["model"] for m in (d.get("models") or config["models"])]
            for name, d in config["datasets"].items()}
    lm = [name for name, d in config["datasets"].items() if della_config.dataset_task(d) == "lm"]
    n_runs = seeds * sum(len(models) for models in runs.values())
    per_run = ("run_config", "train", "evaluate", "generate", "text_metrics", "learning_curves", "samples_page")
    once = ("aggregate", "aggregate_cost", "cost_table", "provenance", "table7", "human_reference_table")
    tables = dict.fromkeys(["table1", *config.get("tables", {}).get("names", [])], 1)
    plan = {rule: n_runs for rule in per_run} | {rule: 1 for rule in once} | tables | {
        "prepare_data": len(lm), "prepare_conditional_data": len(config["datasets"]) - len(lm),
        "tokenizer": len(config["datasets"]), "human_metrics": len(lm),
        "feature_lm": sum("gpt2" in runs[d] for d in lm),
        "interpolation": seeds * sum(MODELS.get(m).has_latent for d in lm for m in runs[d])}
    return {rule: n for rule, n in plan.items() if n}


PLAN = planned_jobs(DEFAULT_CONFIG)


def sentence_default() -> dict:
    """The default config's sentence dataset alone, with the models it runs (all of the config's)."""
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    synthetic = cfg["datasets"]["synthetic"]
    runs = synthetic.pop("models")
    cfg["models"] = {name: entry for name, entry in cfg["models"].items() if name in runs}
    cfg["datasets"], cfg["tables"] = {"synthetic": synthetic}, {"names": ["table1"]}
    return cfg


def test_dry_run_of_the_embedded_default_plans_every_rule(tmp_path):
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "2")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert job_stats(proc.stdout) == {**PLAN, "default": 1}
    assert "python -m della train --config results/default/runs/synthetic/della/seed0/config.yaml" in proc.stdout
    assert "benchmark: results/default/benchmarks/train/synthetic/della/seed0.jsonl" in proc.stdout
    assert not (tmp_path / "results").exists()


def test_workflow_snakefile_alone_plans_the_same(tmp_path):
    proc = snakemake(tmp_path, "-n", "--cores", "2", snakefile=REPO / "workflow" / "Snakefile")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert job_stats(proc.stdout) == {**PLAN, "all": 1}


def test_unknown_model_registry_name_is_rejected_naming_the_key(tmp_path):
    cfg = {"datasets": {"synthetic": {"source": "synthetic"}},
           "models": {"della": {"model": "della"}, "fancy": {"model": "vae9000"}}}
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(write_config(tmp_path, cfg)))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "models.fancy.model: unknown model 'vae9000'" in out and "Available: [" in out


def test_a_configfile_replaces_the_default_and_empty_text_metrics_drop_the_step(tmp_path):
    cfg = {"datasets": {"tiny": {"source": "synthetic", "sizes": {"train": 20, "valid": 5, "test": 5}}},
           "models": {"della": {"model": "della"}, "gpt2": {"model": "gpt2"}},
           "seeds": [0, 1], "text_metrics": []}
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "1", "--configfile", str(write_config(tmp_path, cfg)))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    stats = job_stats(proc.stdout)
    assert stats["train"] == 4 and "text_metrics" not in stats
    assert "data/synthetic" not in proc.stdout  # the embedded default's dataset is gone
    assert "--n-train 20 --n-valid 5 --n-test 5" in proc.stdout
    assert "metrics.json" not in proc.stdout


def test_two_configs_write_to_separate_experiments(tmp_path):
    cfg = {"datasets": {"tiny": {"source": "synthetic", "sizes": {"train": 20, "valid": 5, "test": 5}}},
           "models": {"gpt2": {"model": "gpt2"}}, "text_metrics": []}
    outputs = {}
    for name in ("first", "second"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        proc = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(path))
        assert proc.returncode == 0, proc.stderr + proc.stdout
        outputs[name] = set(re.findall(r"^    output: (.+)$", proc.stdout, re.MULTILINE))
    for name, lines in outputs.items():
        paths = {p for line in lines for p in line.split(", ")}
        assert paths and all(p.startswith(f"results/{name}/") for p in paths), paths


def test_ptb_config_plans_ptb_only(shared_data, tmp_path):
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "1", "--configfile", str(REPO / "config" / "ptb.yaml"))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert job_stats(proc.stdout)["train"] == len(yaml.safe_load((REPO / "config" / "ptb.yaml").read_text())["models"])
    assert "--source dir --path" in proc.stdout and "shared/data/ptb --max-train-lines 2000" in proc.stdout
    assert "data/synthetic" not in proc.stdout and "results/ptb/data/ptb" in proc.stdout


def test_run_config_rule_writes_the_resolved_config(tmp_path):
    cfg = sentence_default()
    cfg["models"] = {"della": {"model": "della", "args": {"latent_size": 8}, "train": {"epochs": 7}}}
    cfg["datasets"]["synthetic"]["train"] = {"epochs": 5, "lr": 2.0e-3}
    proc = snakemake(tmp_path, "--cores", "1", "--until", "run_config",
                     "--configfile", str(write_config(tmp_path, cfg)))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    run = della_config.RunConfig.load(tmp_path / "results/config/runs/synthetic/della/seed0/config.yaml")
    assert run.model == "della" and run.model_args == {"latent_size": 8}
    assert run.train.epochs == 7  # model override beats dataset override beats top level
    assert run.train.lr == 2.0e-3
    assert run.train.max_length == DEFAULT_CONFIG["train"]["max_length"]
    assert run.data_dir == "results/config/data/synthetic" and run.tokenizer_dir == "results/config/tokenizers/synthetic"


# ---------------------------------------------------------------------------------------------
# The schema, checked in-process (snakemake.utils.validate, as the workflow calls it)


def validated(cfg: dict) -> dict:
    from snakemake.utils import validate

    cfg = copy.deepcopy(cfg)
    validate(cfg, str(SCHEMA))
    return cfg


def test_default_config_validates_and_every_run_config_resolves():
    cfg = validated(DEFAULT_CONFIG)
    assert {entry["model"] for entry in cfg["models"].values()} <= set(MODELS.names())
    for dataset in cfg["datasets"]:
        for model in della_config.dataset_models(cfg, dataset):
            run = della_config.resolve_run_config(cfg, dataset, model, 0)
            assert della_config.RunConfig.from_dict(run).task == della_config.dataset_task(cfg["datasets"][dataset])


def test_overrides_do_not_get_defaults_filled_in():
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    cfg["datasets"]["synthetic"]["train"] = {"lr": 2.0e-3}
    cfg = validated(cfg)
    assert cfg["datasets"]["synthetic"]["train"] == {"lr": 2.0e-3}
    run = della_config.resolve_run_config(cfg, "synthetic", "della", 0)
    assert run["train"]["epochs"] == DEFAULT_CONFIG["train"]["epochs"]


@pytest.mark.parametrize("change, message", [
    (lambda c: c["datasets"]["synthetic"].update(source="parquet"), "'parquet' is not one of"),
    (lambda c: c["datasets"].update(ptb={"source": "dir"}), "None is not of type 'string'"),
    (lambda c: c["models"]["della"].update(train={"epochz": 3}), "epochz"),
    (lambda c: c["train"].update(lr="fast"), "'fast' is not of type 'number'"),
    (lambda c: c.update(sedes=[0]), "sedes"),
    (lambda c: c["models"].update({"bad name": {"model": "della"}}), "bad name"),
    (lambda c: c["resources"]["train"].update(gpus=1), "gpus"),
])
def test_schema_rejects_bad_configs(change, message):
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    change(cfg)
    with pytest.raises(Exception, match=re.escape(message)):
        validated(cfg)


def _schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_schema_sections_mirror_the_dataclasses(section):
    schema = _schema()
    props = schema["properties"][section]["properties"]
    fields = {f.name: f.default for f in dataclasses.fields(SECTIONS[section])}
    assert list(props) == list(fields), f"schema {section} keys differ from della.config"
    for name, default in fields.items():
        assert props[name]["default"] == default, f"{section}.{name}"
    override = schema["$defs"][f"{section}_override"]["patternProperties"]
    assert [k.strip("^$") for k in override] == list(fields)


def test_every_schema_property_has_type_description_and_default():
    def walk(node, where):
        if not isinstance(node, dict):
            return
        required = set(node.get("required", []))
        for name, prop in node.get("properties", {}).items():
            if "$ref" not in prop:
                assert "type" in prop, f"{where}.{name}: no type"
            assert "description" in prop, f"{where}.{name}: no description"
            assert "default" in prop or name in required, f"{where}.{name}: no default"
            walk(prop, f"{where}.{name}")
        for key in ("$defs", "additionalProperties"):
            if isinstance(node.get(key), dict):
                for name, sub in (node[key].items() if key == "$defs" else [("*", node[key])]):
                    walk(sub, f"{where}.{name}")

    walk(_schema(), "config")


# ---------------------------------------------------------------------------------------------
# Profile and environment


def test_default_profile_is_local_only():
    profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    assert profile["resources"] == {"gpu": 1}
    assert "executor" not in profile and "cores" not in profile
    assert profile["printshellcmds"] and profile["rerun-incomplete"]


def _requirement_name(spec: str) -> str:
    return re.split(r"[\s<>=!\[;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {}
    for spec in project["dependencies"] + [s for extra in project["optional-dependencies"].values()
                                           for s in extra]:
        wanted[_requirement_name(spec)] = re.sub(r"\s|\[.*\]", "", spec)
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_to_pypi = {"pytorch": "torch"}
    have = {}
    for spec in conda:
        name, _, bound = spec.partition(" ")
        name = conda_to_pypi.get(name, name)
        if name not in ("python", "pip", "pytorch-gpu"):
            bound = bound.replace(" ", "")
            have[name] = name + ("=" + bound if re.match(r"=[^=]", bound) else bound)  # conda =X is ==X
    for spec in pip:
        if spec != "-e .":
            have[_requirement_name(spec)] = re.sub(r"\s|\[.*\]", "", spec)
    assert "-e ." in pip
    assert have == wanted


def test_several_gpus_per_training_job_launch_torchrun(tmp_path):
    cfg = sentence_default()
    cfg["resources"]["train"]["gpu"] = 4
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "2", "--configfile", str(write_config(tmp_path, cfg)))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "torchrun --standalone --nproc_per_node 4 -m della train" in proc.stdout


def test_gpus_set_on_the_command_line_reach_torchrun_too(tmp_path):
    """`--set-resources train:gpu=N` (profiles/README) allocates N GPUs: training must use them all."""
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "2", "--resources", "gpu=2", "--set-resources", "train:gpu=2",
                     "--configfile", str(write_config(tmp_path, sentence_default())))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "torchrun --standalone --nproc_per_node 2 -m della train" in proc.stdout


def test_a_label_with_braces_reaches_the_table_command(tmp_path):
    """A LaTeX label ("\\textsc{DELLA}") is text, not a Snakemake wildcard."""
    cfg = sentence_default()
    cfg["models"]["della"]["label"] = r"\textsc{DELLA}"
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "2", "--configfile", str(write_config(tmp_path, cfg)))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert r"--label 'della=\textsc{DELLA}'" in proc.stdout


def parsed_workflow(workdir: Path):
    """The embedded default's Snakemake workflow, parsed in-process (rules, resources, localrules)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, ResourceSettings

    with SnakemakeApi() as api:
        return api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=REPO / "Snakefile",
                            config_settings=ConfigSettings(), workdir=workdir)._workflow


def test_rules_that_may_need_the_network_are_local_and_model_loading_ones_are_jobs(tmp_path):
    """On a cluster a compute node often has no network (a hub dataset is read by prepare_*), and the
    submit host no GPU (interpolation loads the model on the run's device)."""
    local = parsed_workflow(tmp_path)._localrules
    assert {"prepare_data", "prepare_conditional_data", "tokenizer", "table7"} <= local
    assert not {"train", "evaluate", "generate", "interpolation"} & local


@pytest.mark.parametrize("rule_name", ["train", "evaluate", "generate", "interpolation", "text_metrics"])
def test_a_retried_job_gets_the_configured_memory_and_time_times_its_attempt(rule_name, tmp_path):
    """The Slurm profile retries a failed job once: one killed for memory or time must not fail again
    the same way."""
    from snakemake.iocontainers import Wildcards

    resources_of = config_resources(rule_name)
    rule = parsed_workflow(tmp_path).get_rule(rule_name)
    wildcards = Wildcards(fromdict={"dataset": "synthetic", "model": "della", "seed": "0"})
    for attempt in (1, 2, 3):
        got = rule.expand_resources(wildcards, [], attempt)
        assert (got["mem_mb"], got["runtime"]) == (resources_of["mem_mb"] * attempt, resources_of["runtime"] * attempt)
        assert got["cpus_per_task"] == resources_of["cpus_per_task"]


def config_resources(rule_name: str) -> dict:
    """The rule's resources in the default config (interpolation runs with evaluate's)."""
    return DEFAULT_CONFIG["resources"]["evaluate" if rule_name == "interpolation" else rule_name]
