"""Training: the β schedule as coded, exact resume after a kill, NaN stops, bad input (what a rerun
reuses after a config change: tests/test_reliability.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from della.config import RunConfig, TrainConfig
from della.train import BetaSchedule, Trainer, train


def run_config(corpus: Path, model: str = "della", **train) -> RunConfig:
    return RunConfig.from_dict({
        "dataset": "synthetic", "data_dir": str(corpus / "data"), "tokenizer_dir": str(corpus / "tok"),
        "model": model, "seed": 3,
        "backbone": {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 48},
        "train": {"epochs": 3, "batch_size": 16, "grad_accum": 2, "lr": 1e-3, "max_length": 40, **train},
        "evaluate": {"iw_samples": 4},
    })


def test_cyclical_beta_follows_the_official_code():
    """C = 2: even epochs hold β0; odd epochs ramp by (1-β0)/(S/2) per step, then hold 1."""
    cfg = TrainConfig(beta_schedule="cyclical", beta_0=1e-5, cycle_epochs=2)
    steps = 8
    schedule = BetaSchedule(cfg, steps)
    beta, seen = schedule.initial(), []
    for epoch in range(3):
        for _ in range(steps):
            seen.append(beta)
            beta = schedule.after_step(beta, epoch)
    ramp = (1 - 1e-5) / 4
    assert seen[:9] == [1e-5] * 9  # epoch 0, and the first step of epoch 1 (β updates after a step)
    assert seen[9:13] == pytest.approx([1e-5 + ramp * i for i in range(1, 4)] + [1.0])
    assert seen[13:16] == [1.0] * 3
    assert seen[16] == 1.0 and seen[17:] == [1e-5] * 7  # epoch 2 resets after its first step


def test_constant_beta_and_bad_cycle_are_checked():
    assert BetaSchedule(TrainConfig(beta_schedule="constant", beta=0.5), 4).after_step(0.5, 1) == 0.5
    with pytest.raises(ValueError, match="cycle_epochs"):
        BetaSchedule(TrainConfig(cycle_epochs=1), 4)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train-log.jsonl").read_text().splitlines()]


def test_resume_after_a_kill_ends_with_the_same_numbers(corpus, tmp_path, monkeypatch):
    cfg = run_config(corpus)
    whole = train(cfg, tmp_path / "whole")

    original = Trainer._train_epoch

    def killed_in_epoch_2(self, bar):
        if self.epoch == 1:
            original(self, bar)  # epoch 1 runs, then the process "dies" mid-epoch 2 (before its checkpoint)
            raise KeyboardInterrupt
        return original(self, bar)

    monkeypatch.setattr(Trainer, "_train_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed")
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    resumed = train(cfg, tmp_path / "resumed")

    assert resumed["steps"] == whole["steps"] and resumed["final_valid"] == whole["final_valid"]
    assert _log(tmp_path / "resumed") == _log(tmp_path / "whole")
    a = torch.load(tmp_path / "whole" / "model" / "model.pt")
    b = torch.load(tmp_path / "resumed" / "model" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_log_has_ce_kl_per_group_beta_and_lr(corpus, tmp_path):
    train(run_config(corpus, epochs=1), tmp_path / "run")
    steps = [r for r in _log(tmp_path / "run") if r["split"] == "train"]
    assert len(steps) == 3  # 96 examples / 16 per batch / 2 accumulated
    assert {"ce", "kl", "kl_groups", "beta", "lr", "step", "epoch"} <= set(steps[0])
    assert len(steps[0]["kl_groups"]) == 2
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["seed"] == 3 and run["provenance"]["versions"]["torch"] and run["provenance"]["device"]["type"]


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(corpus, tmp_path, monkeypatch):
    cfg = run_config(corpus, epochs=2)
    from della.models.della import Della

    calls = {"n": 0}
    original = Della.loss

    def loss_that_explodes(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 6:  # epoch 1 (6 micro-batches) is fine, then NaN
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(Della, "loss", loss_that_explodes)
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) in epoch 2.*the last good checkpoint "
                                                 r"is \S+last.pt \(after epoch 1\)"):
        train(cfg, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoint" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_split_smaller_than_one_batch_is_an_error_naming_the_file(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"train\.txt: 96 examples, fewer than one batch"):
        train(run_config(corpus, batch_size=128), tmp_path / "run")


def test_max_length_beyond_the_positions_is_an_error_naming_the_key(corpus, tmp_path):
    with pytest.raises(ValueError, match="train.max_length"):
        train(run_config(corpus, max_length=64), tmp_path / "run")

