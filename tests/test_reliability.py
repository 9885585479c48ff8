"""Reliability (issue 8): a changed recipe never reuses a stale model, checkpoints are safe and
finite, a full disk and a corrupt file say so, outputs follow the umask, and bad model args or a
backbone/tokenizer mismatch fail at DAG build."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import della.io
import della.train
from della.cli import main as della_cli
from della.config import ConfigError, RunConfig, TrainConfig, resolve_run_config
from della.io import atomic_write_text, replace_dir
from della.train import CheckpointError, Trainer, UnsafeCheckpoint, train

from tests.conftest import REPO, snakemake


def config(data: Path, tok: Path, **train) -> RunConfig:
    return RunConfig.from_dict({
        "dataset": "synthetic", "data_dir": str(data), "tokenizer_dir": str(tok), "model": "della", "seed": 3,
        "backbone": {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 48},
        "train": {"epochs": 1, "batch_size": 16, "grad_accum": 2, "lr": 1e-3, "max_length": 40, **train},
    })


@pytest.fixture
def cfg(corpus):
    return lambda **train: config(corpus / "data", corpus / "tok", **train)


def weights(run: Path) -> dict:
    return torch.load(run / "model" / "model.pt", weights_only=True)


def same_run(a: Path, b: Path) -> bool:
    """Same weights, final validation and train log."""
    wa, wb = weights(a), weights(b)
    ja, jb = (json.loads((r / "run.json").read_text()) for r in (a, b))
    return (all(torch.equal(wa[k], wb[k]) for k in wa) and ja["final_valid"] == jb["final_valid"]
            and (a / "train-log.jsonl").read_text() == (b / "train-log.jsonl").read_text())


def checkpoint(run: Path, name: str = "last.pt") -> dict:
    return torch.load(run / "checkpoint" / name, weights_only=True)


# --- 1. the fingerprint: resume only the same recipe -------------------------------------------------
def test_a_changed_lr_trains_from_scratch_like_a_fresh_run(cfg, tmp_path, caplog):
    train(cfg(lr=1e-3), tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="della.train"):
        summary = train(cfg(lr=5e-4), tmp_path / "run")
    train(cfg(lr=5e-4), tmp_path / "fresh")
    assert summary["resumed_from"] is None and same_run(tmp_path / "run", tmp_path / "fresh")
    assert "optimisation.train.lr: 0.001 -> 0.0005" in caplog.text
    aside, = (tmp_path / "run" / "checkpoint.stale").iterdir()  # named by its recipe's fingerprint
    assert torch.load(aside / "last.pt", weights_only=True)["epoch"] == 1


def test_switching_back_to_a_recipe_resumes_its_checkpoints_moved_aside(cfg, tmp_path):
    """lr A, then B, then A again: A's finished checkpoint comes back from checkpoint.stale/ (with its
    train log) and is reused, nothing retrains; B's stays aside for its turn."""
    first = train(cfg(lr=1e-3), tmp_path / "run")
    log_a = (tmp_path / "run" / "train-log.jsonl").read_text()
    weights_a = weights(tmp_path / "run")
    train(cfg(lr=5e-4), tmp_path / "run")
    again = train(cfg(lr=1e-3), tmp_path / "run")
    assert again["resumed_from"] is not None and again["steps"] == first["steps"]
    assert all(torch.equal(weights_a[k], v) for k, v in weights(tmp_path / "run").items())
    assert (tmp_path / "run" / "train-log.jsonl").read_text() == log_a
    kept, = (tmp_path / "run" / "checkpoint.stale").glob("*/last.pt")  # B's
    assert torch.load(kept, weights_only=True)["optimizer"]["param_groups"][0]["lr"] == 5e-4


def test_a_changed_lr_and_more_epochs_train_from_scratch(cfg, tmp_path):
    train(cfg(lr=1e-3), tmp_path / "run")
    train(cfg(lr=5e-4, epochs=2), tmp_path / "run")
    train(cfg(lr=5e-4, epochs=2), tmp_path / "fresh")
    assert same_run(tmp_path / "run", tmp_path / "fresh")
    assert checkpoint(tmp_path / "run")["optimizer"]["param_groups"][0]["lr"] == 5e-4


def test_more_epochs_of_the_same_recipe_continue_exactly(cfg, tmp_path):
    train(cfg(epochs=1), tmp_path / "run")
    summary = train(cfg(epochs=2), tmp_path / "run")
    train(cfg(epochs=2), tmp_path / "fresh")
    assert summary["resumed_from"] == {"checkpoint": str(tmp_path / "run/checkpoint/last.pt"), "epoch": 1,
                                       "weights_only": False}
    assert same_run(tmp_path / "run", tmp_path / "fresh")
    assert [checkpoint(tmp_path / "run", n)["epoch"] for n in ("last.pt", "previous.pt")] == [2, 1]


def test_run_json_records_every_process_that_trained_the_weights(cfg, tmp_path, monkeypatch):
    """A run resumed at another commit (or machine) says so: run.json `processes` lists each process's
    epochs, steps and provenance; the top-level `provenance` is the last process's."""
    real = della.train.provenance
    monkeypatch.setattr(della.train, "provenance", lambda device: {**real(device), "git_commit": "first"})
    first = train(cfg(epochs=1), tmp_path / "run")
    monkeypatch.setattr(della.train, "provenance", real)
    summary = train(cfg(epochs=2), tmp_path / "run")
    one, two = summary["processes"]
    assert (one["from_epoch"], one["to_epoch"], two["from_epoch"], two["to_epoch"]) == (0, 1, 1, 2)
    assert (one["from_step"], one["to_step"], two["to_step"]) == (0, first["steps"], summary["steps"])
    assert one["provenance"]["git_commit"] == "first" and two["provenance"] == summary["provenance"]
    assert two["provenance"]["git_commit"] != "first" and two["provenance"]["world_size"] == 1
    assert checkpoint(tmp_path / "run")["processes"] == summary["processes"]


def test_a_checkpoint_without_processes_resumes_with_them_unknown(cfg, tmp_path):
    train(cfg(epochs=1), tmp_path / "run")
    state = checkpoint(tmp_path / "run")
    del state["processes"]  # as written before processes were recorded
    torch.save(state, tmp_path / "run" / "checkpoint" / "last.pt")
    summary = train(cfg(epochs=2), tmp_path / "run")
    assert summary["processes"][0] == {"from_epoch": None, "to_epoch": 1, "from_step": None,
                                       "to_step": state["step"], "provenance": None}
    assert summary["processes"][1]["from_epoch"] == 1 and summary["processes"][1]["provenance"]


def test_fewer_epochs_reuse_the_previous_checkpoint(cfg, tmp_path, monkeypatch):
    train(cfg(epochs=2), tmp_path / "run")
    previous = checkpoint(tmp_path / "run", "previous.pt")
    monkeypatch.setattr(Trainer, "_train_epoch", lambda self, bar: pytest.fail("retrained"))
    summary = train(cfg(epochs=1), tmp_path / "run")
    assert summary["resumed_from"]["checkpoint"].endswith("previous.pt") and summary["epochs"] == 1
    assert all(torch.equal(previous["model"][k], v) for k, v in weights(tmp_path / "run").items())


def test_a_finished_run_is_reused_when_only_evaluation_settings_change(cfg, tmp_path, monkeypatch):
    first = train(cfg(), tmp_path / "run")
    (tmp_path / "run" / "run.json").unlink()  # Snakemake deletes a job's outputs before it runs
    monkeypatch.setattr(Trainer, "_train_epoch", lambda self, bar: pytest.fail("retrained a finished run"))
    changed = RunConfig.from_dict({**cfg().to_dict(), "evaluate": {"iw_samples": 3, "max_lines": 10},
                                   "train": {**cfg().to_dict()["train"], "log_every": 2}})
    again = train(changed, tmp_path / "run")
    assert again["fingerprint"] == first["fingerprint"] and again["resumed_from"]["epoch"] == 1
    assert again["steps"] == first["steps"] and again["config"]["evaluate"]["iw_samples"] == 3
    assert (tmp_path / "run" / "run.json").exists()


def test_validation_settings_leave_the_trained_weights_alone(cfg, tmp_path):
    """Why evaluate.* is not in the fingerprint: validation draws from its own seeded stream."""
    other = RunConfig.from_dict({**cfg(epochs=2).to_dict(), "evaluate": {"batch_size": 5, "max_lines": 7}})
    a, b = train(cfg(epochs=2), tmp_path / "a"), train(other, tmp_path / "b")
    assert a["fingerprint"] == b["fingerprint"] and a["final_valid"] != b["final_valid"]
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_changed_data_retrains(cfg, corpus, tmp_path):
    """A new synthetic corpus (another grammar seed) in the same place is a new recipe."""
    data, tok = tmp_path / "data", tmp_path / "tok"
    shutil.copytree(corpus / "data", data)
    shutil.copytree(corpus / "tok", tok)
    train(config(data, tok), tmp_path / "run")
    della_cli(["prepare-data", "--source", "synthetic", "--seed", "1", "--n-train", "96", "--n-valid", "24",
               "--n-test", "24", "--out", str(data)])
    della_cli(["tokenizer", "--data", str(data), "--vocab-size", "300", "--out", str(tok)])
    summary = train(config(data, tok), tmp_path / "run")
    train(config(data, tok), tmp_path / "fresh")
    assert summary["resumed_from"] is None and same_run(tmp_path / "run", tmp_path / "fresh")


# --- 3. train.resume --------------------------------------------------------------------------------
def test_resume_never_trains_from_scratch(cfg, tmp_path, monkeypatch):
    train(cfg(), tmp_path / "run")
    calls = []
    original = Trainer._train_epoch
    monkeypatch.setattr(Trainer, "_train_epoch", lambda self, bar: calls.append(1) or original(self, bar))
    summary = train(cfg(resume="never"), tmp_path / "run")
    assert calls == [1] and summary["resumed_from"] is None
    assert list((tmp_path / "run" / "checkpoint.stale").glob("*/last.pt"))


def test_resume_weights_only_keeps_weights_and_counters_with_a_fresh_optimizer(cfg, tmp_path):
    first = train(cfg(lr=1e-3), tmp_path / "run")
    warm = train(cfg(lr=5e-4, epochs=2, resume="weights-only"), tmp_path / "run")
    assert warm["resumed_from"]["weights_only"] and warm["warm_start"]["fingerprint"] == first["fingerprint"]
    state = checkpoint(tmp_path / "run")
    adam_steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {3} and state["step"] == 6  # one epoch on a fresh AdamW, two on the counter
    assert state["optimizer"]["param_groups"][0]["lr"] == 5e-4 and state["fingerprint"] == warm["fingerprint"]
    train(cfg(lr=5e-4, epochs=2), tmp_path / "fresh")
    assert not same_run(tmp_path / "run", tmp_path / "fresh")
    again = train(cfg(lr=5e-4, epochs=2), tmp_path / "run")  # auto: its own recipe now, the warm start kept
    assert again["resumed_from"]["epoch"] == 2 and again["warm_start"] == warm["warm_start"]


def test_a_checkpoint_whose_optimizer_does_not_fit_the_model_names_the_file_and_the_way_on(cfg, tmp_path):
    train(cfg(), tmp_path / "run")
    path = tmp_path / "run" / "checkpoint" / "last.pt"
    state = torch.load(path, weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    group["params"] = [*group["params"], max(group["params"]) + 1]  # one tensor more: another layout
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"last.pt: its optimizer state does not fit .* train.resume: never"):
        train(cfg(epochs=2), tmp_path / "run")


def test_resume_weights_only_refuses_another_architecture(cfg, tmp_path):
    train(cfg(), tmp_path / "run")
    other = RunConfig.from_dict({**cfg(resume="weights-only").to_dict(), "model_args": {"latent_size": 8}})
    with pytest.raises(CheckpointError, match="do not fit this model.*latent_size"):
        train(other, tmp_path / "run")


def test_resume_is_checked():
    with pytest.raises(ConfigError, match=r"train.resume = 'sometimes'; valid: \['auto', 'never', 'weights-only'\]"):
        TrainConfig(resume="sometimes")


# --- 2. + 4. safe and corrupt checkpoints, a full disk ------------------------------------------------
class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")  # would create the marker file if unpickled


def test_a_crafted_pickle_is_refused_naming_the_file(cfg, tmp_path):
    last = tmp_path / "run" / "checkpoint" / "last.pt"
    last.parent.mkdir(parents=True)
    torch.save({"model": Payload(tmp_path / "ran")}, last)
    with pytest.raises(UnsafeCheckpoint, match=f"{last}: refused to load"):
        train(cfg(), tmp_path / "run")
    assert not (tmp_path / "ran").exists()


def test_a_truncated_checkpoint_falls_back_to_the_previous_one(cfg, tmp_path, caplog):
    train(cfg(epochs=2), tmp_path / "fresh")
    shutil.copytree(tmp_path / "fresh", tmp_path / "run")
    last = tmp_path / "run" / "checkpoint" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    (tmp_path / "run" / "run.json").unlink()
    with caplog.at_level(logging.WARNING, logger="della.train"):
        summary = train(cfg(epochs=2), tmp_path / "run")
    assert f"{last}: corrupt or truncated checkpoint" in caplog.text and "falling back" in caplog.text
    assert summary["resumed_from"]["epoch"] == 1 and same_run(tmp_path / "run", tmp_path / "fresh")
    # the unreadable file is kept aside, not rotated over the good previous.pt by the next checkpoint
    assert [checkpoint(tmp_path / "run", n)["epoch"] for n in ("last.pt", "previous.pt")] == [2, 1]
    assert (last.parent / "last.pt.corrupt").read_bytes() == (tmp_path / "fresh/checkpoint/last.pt").read_bytes()[:1000]


def test_a_non_finite_epoch_after_falling_back_names_the_checkpoint_it_resumed(cfg, tmp_path, monkeypatch):
    train(cfg(epochs=2), tmp_path / "run")
    last = tmp_path / "run" / "checkpoint" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    (tmp_path / "run" / "run.json").unlink()
    monkeypatch.setattr(della.train, "validate", lambda *args: {"ce": float("nan")})
    previous = last.with_name("previous.pt")
    with pytest.raises(FloatingPointError, match=f"after epoch 2; the last good checkpoint is {previous} "
                                                 r"\(after epoch 1\)"):
        train(cfg(epochs=2), tmp_path / "run")


def test_a_truncated_checkpoint_without_a_previous_one_is_an_error_naming_it(cfg, tmp_path):
    train(cfg(), tmp_path / "run")
    last = tmp_path / "run" / "checkpoint" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"{last}: corrupt or truncated.*train.resume: never"):
        train(cfg(), tmp_path / "run")


def test_a_full_disk_says_so_and_names_the_checkpoint(cfg, tmp_path, monkeypatch):
    real_open = open

    class FullDisk:
        """A binary file that takes 4 KiB, then fails as a full disk does."""

        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FullDisk(f) if "b" in mode else f

    monkeypatch.setattr(della.io, "open", open_on_a_full_disk, raising=False)
    last = tmp_path / "run" / "checkpoint" / "last.pt"
    with pytest.raises(OSError, match=f"no space left on device while writing {last}"):
        train(cfg(), tmp_path / "run")
    assert list(last.parent.iterdir()) == []  # no partial checkpoint, no temp file


def test_a_full_disk_while_appending_names_the_file(tmp_path):
    with pytest.raises(OSError, match=f"no space left on device while writing {tmp_path / 'log'}"):
        with della.io.naming_a_full_disk(tmp_path / "log"):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))


# --- 3. only a finite epoch is checkpointed --------------------------------------------------------
def test_a_non_finite_validation_writes_no_checkpoint_and_says_how_to_restart(cfg, tmp_path, monkeypatch):
    original = della.train.validate
    calls = []

    def nan_in_epoch_2(*args):
        calls.append(1)
        out = original(*args)
        return {**out, "ce": float("nan")} if len(calls) == 2 else out

    monkeypatch.setattr(della.train, "validate", nan_in_epoch_2)
    last = tmp_path / "run" / "checkpoint" / "last.pt"
    with pytest.raises(FloatingPointError, match=f"after epoch 2; the last good checkpoint is {last} "
                                                 r"\(after epoch 1\).*train.resume: weights-only"):
        train(cfg(epochs=3), tmp_path / "run")
    assert checkpoint(tmp_path / "run")["epoch"] == 1
    assert not (tmp_path / "run" / "checkpoint" / "previous.pt").exists()


# --- 5. permissions --------------------------------------------------------------------------------
def test_outputs_follow_the_umask(cfg, tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x\n")
        (tmp_path / ".tmp-dir").mkdir(mode=0o700)
        replace_dir(tmp_path / ".tmp-dir", tmp_path / "dir")
        train(cfg(), tmp_path / "run")
    finally:
        os.umask(old)
    files = [tmp_path / "a.txt", tmp_path / "run" / "checkpoint" / "last.pt", tmp_path / "run" / "run.json",
             tmp_path / "run" / "model" / "model.pt"]
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o644"}
    assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "dir", tmp_path / "run" / "model")} == {"0o755"}


# --- 6. DAG-build checks -----------------------------------------------------------------------------
def workflow_config(**model_entry) -> dict:
    return {"datasets": {"syn": {"source": "synthetic", "tokenizer": {"pretrained": None}}},
            "models": {"della-x": {"model": "della", **model_entry}},
            "backbone": {"n_positions": 64}, "train": {"max_length": 32}}


@pytest.mark.parametrize("entry, message", [
    ({"args": {"kl_agregate": "mean"}},
     r"models.della-x.args: unknown key 'kl_agregate'; valid keys: \[.*\] \(did you mean 'kl_aggregate'\?\)"),
    ({"args": {"kl_aggregate": "median"}}, r"models.della-x.args: model_args.kl_aggregate = 'median'"),
    ({"backbone": {"pretrained": "/models/gpt2"}}, r"backbone.pretrained = '/models/gpt2' .* from-scratch tokenizer"),
    ({"train": {"max_length": 80}}, r"train.max_length = 80 .* exceeds the backbone's 64 positions"),
    ({"backbone": {"n_embd": 30, "n_head": 4}}, r"backbone.n_embd = 30 .* not divisible by backbone.n_head = 4"),
])
def test_bad_model_entries_fail_when_the_run_config_is_resolved(entry, message):
    with pytest.raises(ConfigError, match=message):
        resolve_run_config(workflow_config(**entry), "syn", "della-x", 0)


def test_a_misspelt_model_arg_fails_the_dry_run(tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["models"]["della-official"]["args"]["kl_agregate"] = cfg["models"]["della-official"]["args"].pop("kl_aggregate")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "config.yaml"), timeout=300)
    assert proc.returncode != 0
    assert "models.della-official.args: unknown key 'kl_agregate'" in proc.stdout + proc.stderr


SECTIONS = {"backbone": "BackboneConfig", "train": "TrainConfig", "evaluate": "EvalConfig", "generate": "GenerateConfig"}


def _numeric_bounds():
    """(section, key, property) of every run-config key the workflow schema bounds."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["properties"]
    for section in SECTIONS:
        for key, prop in schema[section]["properties"].items():
            if {"minimum", "exclusiveMinimum", "maximum"} & set(prop):
                yield pytest.param(section, key, prop, id=f"{section}.{key}")


@pytest.mark.parametrize("section, key, prop", list(_numeric_bounds()))
def test_a_hand_written_run_config_gets_the_schemas_bounds_naming_the_key(section, key, prop):
    """`python -m della train --config` reads run configs the schema never saw (hand-written, or
    `run-config --resolved`): out of the schema's bounds, or of the wrong type, is a ConfigError
    naming the key, not a ZeroDivisionError or a silent gradient ascent (grad_clip < 0)."""
    import della.config

    cls = getattr(della.config, SECTIONS[section])
    integer = "integer" in (prop["type"] if isinstance(prop["type"], list) else [prop["type"]])
    bad = []
    if "minimum" in prop:
        bad.append(prop["minimum"] - (1 if integer else 0.5))
        cls(**{key: prop["minimum"]})  # the bound itself is valid
    if "exclusiveMinimum" in prop:
        bad.append(prop["exclusiveMinimum"])
    if "maximum" in prop:
        bad.append(prop["maximum"] + 1)
    bad.append("5e-4" if not integer else 2.5)  # PyYAML reads 5e-4 as a string; 2.5 is no integer
    for value in bad:
        with pytest.raises(ConfigError, match=rf"^{section}\.{key} = "):
            cls(**{key: value})
