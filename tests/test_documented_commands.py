"""Every command in a fenced bash block of README.md and config/README.md works as documented.

Each command is classified (`classify`); a command no rule knows fails the test, so new
documentation must say how it is checked:

- `python -m della ...` / `python -m metrics ...` (the hand-run chain): run for real, in order, in
  a temporary directory whose `config/config.yaml` is the shipped config made tiny (`tiny_config`),
  through the same entry points as `python -m` (in-process, so torch loads once). The only edits
  are the explicit SUBSTITUTIONS (sizes and placeholders); `model_epoch_40.pt` and the GPT-2
  directory are tiny random checkpoints made here.
- `snakemake ...`: a dry run (`-n`) of the repository's workflow in a scratch directory, from the
  repository root, with the command's own options (`--unlock` runs as is; it only removes locks).
  A flag shown on its own line (`--slurm-status-command squeue`) is added to the Slurm dry run.
  `--configfile config/ptb.yaml` needs ../shared/data/ptb and is left out where that is absent.
- documented exceptions, checked for syntax and for what they name: `pip install` (the extras
  exist in pyproject.toml), `python -m pytest` (the test suite itself; its paths exist).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

from della.cli import main as della_cli
from tests.conftest import REPO, SHARED_DATA

DOCS = [REPO / "README.md", REPO / "config" / "README.md"]

# (documented text, what the chain runs instead, why)
SUBSTITUTIONS = [
    ("--source synthetic --out", "--source synthetic --n-train 64 --n-valid 16 --n-test 16 --out", "tiny corpus"),
    ("--vocab-size 1000", "--vocab-size 300", "tiny corpus"),
    ("--metrics bleu,self_bleu,dist,js,cnd,mauve", "--metrics bleu,self_bleu,dist,js",
     "cnd and mauve load a sentence encoder (tests/metrics covers them)"),
    ("/path/to/gpt2", "tiny-gpt2", "a placeholder: a tiny random GPT-2 made here"),
]


def fenced_bash_commands(path: Path) -> list[str]:
    """The commands of the ```bash blocks: continuation lines joined, `&&` chains split."""
    commands, block = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            block = [] if stripped == "```bash" and block is None else None
            continue
        if block is None:
            continue
        if block and block[-1].endswith("\\"):
            block[-1] = block[-1][:-1] + " " + stripped
        else:
            block.append(stripped)
        if not stripped.endswith("\\"):
            for tokens in split_chain(shlex.split(block[-1], comments=True)):
                commands.append(shlex.join(tokens))
    return [c for c in commands if c]


def split_chain(tokens: list[str]) -> list[list[str]]:
    chain = [[]]
    for token in tokens:
        if token == "&&":
            chain.append([])
        else:
            chain[-1].append(token)
    return chain


def classify(command: str) -> str:
    """run | dry-run | flag | pip | pytest"""
    tokens = shlex.split(command)
    if tokens[:3] in (["python", "-m", "della"], ["python", "-m", "metrics"]):
        return "run"
    if tokens[:3] == ["python", "-m", "pytest"]:
        return "pytest"
    if tokens[:2] == ["pip", "install"]:
        return "pip"
    if tokens[0] == "snakemake":
        return "dry-run"
    if tokens[0].startswith("--"):
        return "flag"
    raise AssertionError(f"documented command {command!r}: no rule says how to check it (see this module)")


ALL_COMMANDS = [c for doc in DOCS for c in fenced_bash_commands(doc)]


def test_every_documented_command_is_classified():
    kinds = [classify(c) for c in ALL_COMMANDS]
    assert {"run", "dry-run"} <= set(kinds)
    assert any("run-config" in c for c in ALL_COMMANDS)  # the chain makes its run config


# ---------------------------------------------------------------------------------------------
# snakemake: dry runs, started together at the beginning of the module (they take the longest)


def snakemake_argv(command: str, workdir: Path) -> list[str]:
    args = shlex.split(command)[1:]
    if "--unlock" not in args and "-n" not in args:
        args.append("-n")
    if "--workflow-profile" in args and args[args.index("--workflow-profile") + 1] == "profiles/slurm" and "-n" in args:
        args += flags_to_add()
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]


def flags_to_add() -> list[str]:
    return [t for c in ALL_COMMANDS if classify(c) == "flag" for t in shlex.split(c)]


def needs_shared_data(command: str) -> bool:
    uses_shared = ("ptb", "table8", "wp", "cnndm", "quora")
    return any(f"config/{name}.yaml" in command for name in uses_shared) and not SHARED_DATA.is_dir()


@pytest.fixture(scope="module", autouse=True)
def dry_runs(tmp_path_factory):
    """Each distinct snakemake command (after adding -n), started now, in the repository root."""
    argvs = {}
    for command in ALL_COMMANDS:
        if classify(command) == "dry-run" and not needs_shared_data(command):
            argv = snakemake_argv(command, tmp_path_factory.mktemp("dry"))
            argvs.setdefault(shlex.join(argv[7:]), (command, argv))  # the same options: one dry run
    procs = {command: subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for command, argv in argvs.values()}
    yield procs
    for proc in procs.values():
        proc.kill()


def test_documented_snakemake_commands_dry_run(dry_runs):
    failures = []
    for command, proc in dry_runs.items():
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            failures.append(f"{command}\n{out[-3000:]}")
        elif "--unlock" not in command:
            assert "This was a dry-run" in out, command
    assert not failures, "\n\n".join(failures)
    assert any("seeds=[0,1,2]" in c for c in dry_runs)


# ---------------------------------------------------------------------------------------------
# the hand-run chain, for real


def tiny_config() -> dict:
    """config/config.yaml with the sizes made tiny (every model entry and switch kept)."""
    config = copy.deepcopy(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    config["experiment"] = "default"  # a copy of the embedded config: its outputs go where the README says
    config["datasets"]["synthetic"]["sizes"] = {"train": 64, "valid": 16, "test": 16}
    config["backbone"] = {"n_layer": 2, "n_embd": 16, "n_head": 2, "n_positions": 48, "dropout": 0.0}
    config["train"] |= {"epochs": 1, "batch_size": 16}
    config["evaluate"] = {"iw_samples": 2, "batch_size": 16}
    config["generate"] = {"n_samples": 4, "max_new_tokens": 8}
    return config


def make_placeholders(workdir: Path) -> None:
    """The checkpoints the import commands name: a tiny GPT-2 directory and a tiny official
    state_dict, with the vocabulary of the tokenizer the chain trained."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from della.data.tokenizer import load_tokenizer
    from tests.test_checkpoints import official_state_dict

    vocab = load_tokenizer(workdir / "results/default/tokenizers/synthetic").vocab_size
    GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=48, n_embd=16, n_layer=2, n_head=2)).save_pretrained(
        workdir / "tiny-gpt2")
    torch.save(official_state_dict(vocab, width=64), workdir / "model_epoch_40.pt")  # width/64 = 1 head


def substituted(command: str) -> str:
    for documented, instead, _ in SUBSTITUTIONS:
        command = command.replace(documented, instead)
    return command


def run_in_process(command: str) -> None:
    from metrics.__main__ import main as metrics_cli

    tokens = shlex.split(substituted(command))
    if tokens[2] == "della":
        della_cli(tokens[3:])
    else:
        assert metrics_cli(tokens[3:]) == 0, command


def test_the_hand_run_chain_runs_on_a_fresh_directory(tmp_path, monkeypatch, capsys):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(tiny_config(), sort_keys=False))
    monkeypatch.chdir(tmp_path)
    chain = [c for c in ALL_COMMANDS if classify(c) == "run"]
    assert all(any(documented in c for c in chain) for documented, _, _ in SUBSTITUTIONS)
    start = time.perf_counter()
    for command in chain:
        if "import-checkpoint" in command and not (tmp_path / "model_epoch_40.pt").exists():
            make_placeholders(tmp_path)
        run_in_process(command)
    print(f"\n[docs] {len(chain)} chain commands: {time.perf_counter() - start:.0f} s")
    run = tmp_path / "results/default/runs/synthetic/della/seed0"
    assert {"config.yaml", "run.json", "train-log.jsonl"} <= {p.name for p in run.iterdir()}
    assert (tmp_path / "samples.txt").read_text().count("\n") == 4 and (tmp_path / "beam.txt").read_text().count("\n") == 20
    assert (tmp_path / "results/default/runs/synthetic/della-official/imported/model").is_dir()
    last_eval = json.loads((tmp_path / "eval.json").read_text())  # the last command: the imported official run
    assert last_eval["config"]["model_args"]["pool"] == "attention" and last_eval["config"]["backbone"]["n_embd"] == 64
    assert last_eval["metrics"]["iw_ppl"]["value"] > 1
    assert "della: DELLA" in capsys.readouterr().out  # `models` printed the registry


# ---------------------------------------------------------------------------------------------
# documented exceptions


def test_pip_and_pytest_lines_name_what_exists():
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    markers = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    for command in ALL_COMMANDS:
        tokens = shlex.split(command)
        if classify(command) == "pip":
            target = tokens[-1]
            assert target == "." or re.fullmatch(r"\.\[[a-z,]+\]", target), command
            assert set(re.findall(r"[a-z]+", target)) <= extras, command
        elif classify(command) == "pytest":
            for arg in tokens[3:]:
                if not arg.startswith("-") and "/" in arg:
                    assert (REPO / arg).exists(), command
            if "-m" in tokens[3:]:
                marker = tokens[3:][tokens[3:].index("-m") + 1]
                assert any(m.startswith(f"{marker}:") for m in markers), command
