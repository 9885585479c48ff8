"""`run-config` writes what the workflow's run_config rule writes; `models` lists the registry."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import yaml

from della.cli import main as della_cli
from della.models import MODELS
from tests.conftest import REPO, snakemake


def test_run_config_equals_the_workflow_rule(tmp_path):
    target = "results/default/runs/synthetic/della-official/seed1/config.yaml"
    proc = snakemake(tmp_path, target, "--cores", "1", "--config", "seeds=[0,1]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    della_cli(["run-config", "--config", str(REPO / "config/config.yaml"), "--dataset", "synthetic",
               "--model", "della-official", "--seed", "1", "--out", str(tmp_path / "by-hand.yaml")])
    by_hand = (tmp_path / "by-hand.yaml").read_text()
    assert by_hand == (tmp_path / target).read_text()
    run = yaml.safe_load(by_hand)
    assert run["seed"] == 1 and run["model_args"]["pool"] == "attention"
    assert run["train"]["grad_accum"] == 1  # a schema default: config.yaml does not set it


def write_config(tmp_path, **change):
    config = yaml.safe_load((REPO / "config/config.yaml").read_text()) | change
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    return str(tmp_path / "c.yaml")


@pytest.mark.parametrize("change, args, message", [
    ({"train": {"epochs": 0}}, ["--model", "della"], "epochs"),
    ({"train": {"epoch": 3}}, ["--model", "della"], "epoch"),
    ({}, ["--model", "nope"], "nope"),
    ({"models": {"x": {"model": "dela"}}}, ["--model", "x"], "models.x.model: unknown model 'dela'"),
])
def test_run_config_errors_name_the_key(tmp_path, caplog, change, args, message):
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        della_cli(["run-config", "--config", write_config(tmp_path, **change), "--dataset", "synthetic", *args,
                   "--out", str(tmp_path / "out.yaml")])
    assert exit_info.value.code == 2 and message in caplog.text
    assert not (tmp_path / "out.yaml").exists()


def test_run_config_names_a_missing_file(tmp_path, caplog):
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit):
        della_cli(["run-config", "--config", str(tmp_path / "absent.yaml"), "--dataset", "d", "--model", "m",
                   "--out", str(tmp_path / "out.yaml")])
    assert "absent.yaml: cannot read the workflow config" in caplog.text


def test_models_lists_every_registered_model_with_its_defaults(capsys):
    della_cli(["models"])
    out = capsys.readouterr().out
    blocks = {block.split(":", 1)[0]: block for block in out.strip().split("\n\n")}
    assert list(blocks) == MODELS.names()
    for name, block in blocks.items():
        for field in dataclasses.fields(MODELS.get(name).config_class):
            assert f"\n    {field.name} = {field.default!r}" in block, (name, field.name)
    assert blocks["della"].startswith("della: DELLA (Hu et al., NAACL 2022)")


def test_models_rejects_an_unknown_name(caplog):
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit):
        della_cli(["models", "dela"])
    assert "Did you mean 'della'" in caplog.text
