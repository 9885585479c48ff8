"""A baseline is one file, one registration line and one config line: named, checked at DAG build.

The toy baseline is written into a copy of the repository (its package, workflow and config), exactly
where a researcher adds one: its class in `della/models/<name>.py` and one `register_model` call in
`della/models/catalog.py`. Nothing else is edited; the copy's package comes first on the path
(PYTHONPATH, and Snakemake puts the Snakefile's folder first).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from della.models import MODELS, check_model_name, default_label, register_model
from della.models.configs import GPT2LMConfig
from tests.conftest import REPO

TOY = '''
from della.models.embed import EmbedVAE


class ToyVAE(EmbedVAE):
    registry_name = "toy"
'''
TOY_REGISTRATION = '''
register_model("toy", SingleLatentConfig, paper_name="Toy", gpt2="della.models.toy:ToyVAE")
'''

SEES_TOY = """
import della
from della.models import MODELS, default_label
from della.models.base import Vocab, build_model
from della.config import BackboneConfig
assert della.__file__.startswith({root!r}), della.__file__
tiny = BackboneConfig(n_layer=1, n_embd=16, n_head=2, n_positions=16, dropout=0.0)
model = build_model("toy", {{}}, Vocab(size=20, bos_id=1, eos_id=2, pad_id=0), backbone_config=tiny)
print(MODELS.names(), default_label("toy"), type(model).__name__)
"""


@pytest.fixture(scope="module")
def toy_package(tmp_path_factory) -> Path:
    """A copy of the repository's package, workflow and config with one new file, della/models/toy.py,
    and its registration line."""
    root = tmp_path_factory.mktemp("toy")
    for folder in ("della", "workflow", "config", "tests"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "Snakefile", root / "Snakefile")
    (root / "della" / "models" / "toy.py").write_text(TOY)
    with (root / "della" / "models" / "catalog.py").open("a") as f:
        f.write(TOY_REGISTRATION)
    return root


def run_with(package: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_a_new_model_file_and_its_registration_line_build_it(toy_package, tmp_path):
    proc = run_with(toy_package, ["-c", SEES_TOY.format(root=str(toy_package))], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'toy'" in proc.stdout and "Toy ToyVAE" in proc.stdout


def test_the_model_tests_run_on_a_new_model_file(toy_package, tmp_path):
    proc = run_with(toy_package, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "toy",
                                  str(toy_package / "tests" / "test_models.py")], toy_package)
    assert proc.returncode == 0, proc.stdout[-3000:]
    ran = proc.stdout.splitlines()[-1]
    assert " passed" in ran and "failed" not in ran and int(ran.split(" passed")[0].split()[-1]) >= 4, ran


def write_fake_results(workdir: Path, models: list[str]) -> None:
    """eval.json of every run, as `della evaluate` writes it (PPL lower is better)."""
    for i, model in enumerate(models):
        path = workdir / "results" / "config" / "runs" / "synthetic" / model / "seed0" / "eval.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"kind": "eval", "metrics": {"iw_ppl": {
            "value": 10.0 + i, "higher_is_better": False, "label": "PPL", "display_scale": 1, "decimals": 2}}}))


def test_toy_baseline_with_one_config_line_is_a_row_of_table1(toy_package, tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["models"] = {"embed": {"model": "embed"}, "toy": {"model": "toy"}}  # the one config line: toy
    config["datasets"] = {"synthetic": {**config["datasets"]["synthetic"], "models": None}}
    config["tables"] = {"names": ["table1"]}
    config["text_metrics"] = []
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    write_fake_results(tmp_path, list(config["models"]))
    # only the table rules may run: the fake eval.json files stand in for trained runs
    snakemake = ["-m", "snakemake", "-s", str(toy_package / "Snakefile"), "-d", str(tmp_path), "--workflow-profile",
                 "none", "--configfile", str(tmp_path / "config.yaml"), "--cores", "1",
                 "--allowed-rules", "aggregate", "table1"]
    proc = run_with(toy_package, [*snakemake, "--", "table1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    md = (tmp_path / "results" / "config" / "tables" / "table1.md").read_text()  # experiment: the file's stem
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ")][2:]  # the header, the group titles
    assert rows == ["**Dataset: Synthetic**", "Embed", "Toy"]
    assert "| Toy | 11.00 |" in md and "| Embed | **10.00** |" in md
    # the rendering code is an input of the table rules: editing it reruns them (Snakemake compares
    # checksums, so the file's content must change, not only its time)
    with (toy_package / "della" / "tables.py").open("a") as f:
        f.write("# an edit\n")
    proc = run_with(toy_package, [*snakemake, "-n", "--", "table1"], tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Nothing to be done" not in out, out[-3000:]
    assert "updated input files:\n        aggregate" in out


def test_an_unknown_model_fails_at_dag_build_naming_the_valid_ones(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                           "--workflow-profile", "none", "-n", "--config", "models={x: {model: dela}}"],
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "models.x.model: unknown model 'dela'. Did you mean 'della'?" in out
    assert f"Available: {MODELS.names()}" in out


def test_check_and_default_label():
    check_model_name("embed", "models.e.model")
    with pytest.raises(ValueError, match=r"^models\.e\.model: unknown model 'embedd'\. Did you mean 'embed'"):
        check_model_name("embedd", "models.e.model")
    assert default_label("gpt2") == "GPT-2" and default_label("embed") == "Embed"


def test_a_registration_naming_a_missing_module_fails_when_it_is_made():
    """The catalog is imported when the Snakefile is parsed: a typo in a class path fails the DAG build."""
    with pytest.raises(ValueError, match=r"^model 'x', gpt2='della.models.gtp2:GPT2LM': no module 'della.models.gtp2'"):
        register_model("x", GPT2LMConfig, gpt2="della.models.gtp2:GPT2LM")
    with pytest.raises(ValueError, match=r"bart='della.models.bart': expected 'package.module:Class'$"):
        register_model("x", GPT2LMConfig, bart="della.models.bart")
    with pytest.raises(ValueError, match=r"give its class on one or more backbone kinds"):
        register_model("x", GPT2LMConfig)
    with pytest.raises(ValueError, match=r"backbone kinds \('gpt2', 'bart'\), not \['t5'\]"):
        register_model("x", GPT2LMConfig, t5="della.models.gpt2:GPT2LM")
    assert "x" not in MODELS


def test_every_registration_names_classes_that_carry_its_name():
    for name in MODELS.names():
        spec = MODELS.get(name)
        for kind in spec.classes:
            assert spec.model_class(kind).registry_name == name, (name, kind)


def test_the_dag_build_imports_neither_torch_nor_transformers():
    """The Snakefile checks every model entry against its registered config class at DAG build, so
    every snakemake call (each dry run, each Slurm job's re-parse) imports the registry: importing
    transformers there cost 2.5 of the 6 s of a dry run, torch 2 of the rest. The registry names each
    model's classes by dotted path; they are imported where a model is built."""
    snakefile_imports = "import della.config, della.models, della.tables, metrics"
    code = (f"import sys; {snakefile_imports}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout[:2000]
