"""`python -m della train --config run.yaml --out RUN_DIR`: train one model, resumably.

AdamW, gradient accumulation, the official cyclical β schedule (or constant β), a JSONL line per
optimizer step, a checkpoint after every epoch. A rerun after a kill resumes from the last
checkpoint and ends with the same numbers as an uninterrupted run: batch order is a function of
(seed, epoch) and the RNG states are checkpointed.

Data-parallel: `torchrun --nproc_per_node N -m della train ...` runs the same command with
DistributedDataParallel (NCCL on GPUs, gloo on CPUs). `train.batch_size` is per process, so the
global batch is N times larger; rank 0 alone writes logs, checkpoints and the model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from della.batches import EncodedSplit, collate, encode_split, length_sorted_batches, shuffled_batches
from della.config import RunConfig, TrainConfig
from della.io import atomic_write, atomic_write_json, atomic_write_text
from della.models import LatentModel, Vocab, build_model
from della.provenance import provenance
from della.run import RunDir, setup

log = logging.getLogger(__name__)


class BetaSchedule:
    """β per optimizer step. `cyclical` is the official code's (reference §4): with period C
    epochs, β = β0 in epochs where (epoch mod C) < C//2; otherwise after each optimizer step
    β += (β_max - β0) / ((C//2) * S / 2), capped at β_max; S = optimizer steps per epoch."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int):
        if cfg.beta_schedule not in ("cyclical", "constant"):
            raise ValueError(f"train.beta_schedule = {cfg.beta_schedule!r}; expected 'cyclical' or 'constant'")
        if cfg.beta_schedule == "cyclical" and cfg.cycle_epochs < 2:
            raise ValueError(f"train.cycle_epochs = {cfg.cycle_epochs}: the cyclical schedule needs C >= 2")
        self.cfg = cfg
        self.ramp = (cfg.beta - cfg.beta_0) / ((cfg.cycle_epochs // 2) * steps_per_epoch / 2)

    def initial(self) -> float:
        return self.cfg.beta_0 if self.cfg.beta_schedule == "cyclical" else self.cfg.beta

    def after_step(self, beta: float, epoch: int) -> float:
        if self.cfg.beta_schedule == "constant":
            return beta
        if epoch % self.cfg.cycle_epochs < self.cfg.cycle_epochs // 2:
            return self.cfg.beta_0
        return min(self.cfg.beta, beta + self.ramp)


def load_split(cfg: RunConfig, split: str, tokenizer, max_lines: int | None = None) -> EncodedSplit:
    from della.data.corpus import read_lines

    path = Path(cfg.data_dir) / f"{split}.txt"
    lines = read_lines(path)
    if max_lines is not None:
        lines = lines[:max_lines]
    return encode_split(lines, tokenizer, cfg.train.max_length, str(path))


def new_model(cfg: RunConfig, tokenizer) -> LatentModel:
    vocab = Vocab(size=tokenizer.vocab_size, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                  pad_id=tokenizer.pad_id)
    model = build_model(cfg.model, cfg.model_args, vocab, backbone_config=cfg.backbone)
    if cfg.train.max_length > model.backbone.n_positions:
        raise ValueError(f"train.max_length ({cfg.train.max_length}) exceeds the backbone's "
                         f"{model.backbone.n_positions} positions (backbone.n_positions)")
    return model


def make_optimizer(model: LatentModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def validate(model: LatentModel, split: EncodedSplit, batch_size: int, device) -> dict:
    """Mean per-sentence CE and KL (one posterior sample) on a split, β-free."""
    model.eval()
    ce = kl = 0.0
    for idx in length_sorted_batches(split.sequences, batch_size):
        ids, mask = collate([split.sequences[i] for i in idx], model.vocab.pad_id, device)
        out = model.loss(ids, mask, beta=1.0)
        ce += out.ce.sum().item()
        kl += out.kl.sum().item()
    model.train()
    n = len(split.sequences)
    return {"ce": ce / n, "kl": kl / n}


class Distributed:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK); world 1 is a plain process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.is_main = self.rank == 0

    def start(self, device: torch.device) -> torch.device:
        if self.world == 1:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(values)
        return values

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


class Trainer:
    def __init__(self, cfg: RunConfig, out: Path):
        from della.data.tokenizer import load_tokenizer

        self.cfg, self.run, self.dist = cfg, RunDir(out), Distributed()
        self.device = self.dist.start(setup(cfg))  # seeds cfg.seed: identical initial weights on every rank
        self.tokenizer = load_tokenizer(cfg.tokenizer_dir)
        self.train_split = load_split(cfg, "train", self.tokenizer, cfg.train.max_train_lines)
        self.valid_split = load_split(cfg, "valid", self.tokenizer, cfg.evaluate.max_lines)
        tc = cfg.train
        n = len(self.train_split.sequences)
        self.global_batch = tc.batch_size * self.dist.world
        if n < self.global_batch:
            raise ValueError(f"{self.train_split.path}: {n} examples, fewer than one batch "
                             f"(train.batch_size = {tc.batch_size} x {self.dist.world} processes)")
        micro_batches = -(-n // self.global_batch)
        self.steps_per_epoch = -(-micro_batches // tc.grad_accum)
        self.model = new_model(cfg, self.tokenizer).to(self.device)
        torch.manual_seed(cfg.seed * 1_000 + self.dist.rank)  # own dropout and posterior noise per rank
        self.trained = self.model if self.dist.world == 1 else DistributedDataParallel(
            self.model, find_unused_parameters=self._has_unused_parameters())
        self.optimizer = make_optimizer(self.model, tc)
        self.schedule = BetaSchedule(tc, self.steps_per_epoch)
        self.epoch, self.step, self.beta, self.log_lines = 0, 0, self.schedule.initial(), 0
        self.train_seconds, self.tokens_seen = 0.0, 0

    def _has_unused_parameters(self) -> bool:
        """One probe step (e.g. DELLA's first prior net is unused under p(z_1) = N(0, I))."""
        ids, mask = collate(self.train_split.sequences[:2], self.model.vocab.pad_id, self.device)
        self.model.loss(ids, mask, beta=1.0).loss.backward()
        unused = any(p.grad is None for p in self.model.parameters() if p.requires_grad)
        self.model.zero_grad(set_to_none=True)
        return unused

    # --- checkpointing ---------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        rng = self.dist.gather(rng_state())  # every rank's streams, so a resume is exact
        if self.dist.is_main:
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "epoch": self.epoch, "step": self.step, "beta": self.beta, "log_lines": self.log_lines,
                     "train_seconds": self.train_seconds, "tokens_seen": self.tokens_seen, "rng": rng,
                     "world_size": self.dist.world}
            atomic_write(self.run.checkpoint, lambda tmp: torch.save(state, tmp))
        self.dist.barrier()

    def try_resume(self) -> bool:
        if not self.run.checkpoint.exists():
            return False
        state = torch.load(self.run.checkpoint, map_location=self.device, weights_only=False)
        if state["world_size"] != self.dist.world:
            raise ValueError(f"{self.run.checkpoint} was written by {state['world_size']} process(es); "
                             f"resume it with the same number (now {self.dist.world})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for key in ("epoch", "step", "beta", "log_lines", "train_seconds", "tokens_seen"):
            setattr(self, key, state[key])
        set_rng_state(state["rng"][self.dist.rank])
        if self.dist.is_main:
            self._truncate_log(self.log_lines)  # drop lines of the interrupted epoch
        log.info("resumed from %s after epoch %d (step %d)", self.run.checkpoint, self.epoch, self.step)
        return True

    def _truncate_log(self, n: int) -> None:
        lines = self.run.train_log.read_text().splitlines(keepends=True) if self.run.train_log.exists() else []
        atomic_write_text(self.run.train_log, "".join(lines[:n]))

    def _log(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        with self.run.train_log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.log_lines += 1

    # --- the loop --------------------------------------------------------------------------------
    def fit(self) -> dict:
        tc = self.cfg.train
        self.run.root.mkdir(parents=True, exist_ok=True)
        if not self.try_resume() and self.dist.is_main:
            self._truncate_log(0)
        self.model.train()
        total = tc.epochs * self.steps_per_epoch
        valid = None
        with tqdm(total=total, initial=self.step, desc=f"train {self.cfg.model}", unit="step",
                  mininterval=2.0, disable=not self.dist.is_main) as bar:
            while self.epoch < tc.epochs:
                start = time.perf_counter()
                self._train_epoch(bar)
                self.train_seconds += time.perf_counter() - start
                if self.dist.is_main:
                    valid = validate(self.model, self.valid_split, self.cfg.evaluate.batch_size, self.device)
                    self._log({"split": "valid", "epoch": self.epoch, "step": self.step, **valid})
                self.epoch += 1
                self.save_checkpoint()
        return valid

    def _train_epoch(self, bar) -> None:
        tc, seqs = self.cfg.train, self.train_split.sequences
        rank, bs = self.dist.rank, tc.batch_size
        batches = shuffled_batches(len(seqs), self.global_batch, seed=self.cfg.seed * 100_003 + self.epoch)
        for first in range(0, len(batches), tc.grad_accum):
            group = [b[rank * bs: (rank + 1) * bs] for b in batches[first: first + tc.grad_accum]]
            self.optimizer.zero_grad(set_to_none=True)
            sums = torch.zeros(4 + self.model.n_groups, dtype=torch.float64)  # loss, ce, tokens, n, kl per group
            for i, idx in enumerate(group):
                ids, mask = collate([seqs[j] for j in idx], self.model.vocab.pad_id, self.device)
                last = i == len(group) - 1
                sync = contextlib.nullcontext() if last or self.dist.world == 1 else self.trained.no_sync()
                with sync:
                    out = self.trained(ids, mask, self.beta)
                    if not torch.isfinite(out.loss):
                        raise FloatingPointError(
                            f"non-finite loss ({out.loss.item()}) at epoch {self.epoch}, step {self.step}; "
                            f"the last good checkpoint is kept at {self.run.checkpoint}")
                    (out.loss / len(group)).backward()
                sums += torch.tensor([out.loss.item() * len(idx), out.ce.sum().item(), out.n_tokens.sum().item(),
                                      len(idx), *out.kl.detach().sum(0).tolist()], dtype=torch.float64)
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
            self.optimizer.step()
            loss, ce, tokens, n, *kl_groups = self.dist.sum(sums).tolist()
            self.tokens_seen += int(tokens)
            if self.step % tc.log_every == 0:
                per_group = [k / n for k in kl_groups]
                self._log({"split": "train", "epoch": self.epoch, "step": self.step, "beta": self.beta,
                           "lr": self.optimizer.param_groups[0]["lr"], "loss": loss / n, "ce": ce / n,
                           "ce_per_token": ce / max(tokens, 1), "kl": sum(per_group), "kl_groups": per_group})
            self.step += 1
            self.beta = self.schedule.after_step(self.beta, self.epoch)
            bar.update(1)
            bar.set_postfix(ce=f"{ce / n:.2f}", beta=f"{self.beta:.2f}", refresh=False)


def peak_memory_mb(device: torch.device) -> dict:
    out = {"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def pin_config(cfg: RunConfig, run: RunDir) -> None:
    """The run dir keeps the config it was trained with; resuming under another one is an error."""
    if run.config.exists():
        if RunConfig.load(run.config) != cfg:
            raise ValueError(f"{run.config} differs from the given config: a run dir belongs to one config "
                             f"(delete {run.root} or choose another --out)")
        return
    atomic_write_text(run.config, cfg.dump())


def train(cfg: RunConfig, out: Path) -> dict | None:
    """Train, save the model and write run.json; returns the run summary (None on ranks > 0)."""
    trainer = Trainer(cfg, out)
    try:
        if trainer.dist.is_main:
            pin_config(cfg, trainer.run)
        trainer.dist.barrier()
        wall = time.perf_counter()
        valid = trainer.fit()
        summary = _finish(trainer, valid, wall) if trainer.dist.is_main else None
        trainer.dist.barrier()  # ranks leave together: tearing gloo down while a peer still works can hang
        return summary
    finally:
        trainer.dist.close()


def _finish(trainer: Trainer, valid: dict, wall: float) -> dict:
    cfg = trainer.cfg
    trainer.model.save_pretrained(trainer.run.model)
    model = trainer.model
    summary = {
        "kind": "run",
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "provenance": {**provenance(trainer.device), "world_size": trainer.dist.world},
        "parameters": sum(p.numel() for p in model.parameters()),
        "latent": {"groups": model.n_groups, "size": model.latent_size},
        "data": {"train": trainer.train_split.summary(), "valid": trainer.valid_split.summary()},
        "steps": trainer.step, "epochs": trainer.epoch,
        "cost": {"train_seconds": trainer.train_seconds, "wall_seconds_this_process": time.perf_counter() - wall,
                 "tokens_seen": trainer.tokens_seen,
                 "tokens_per_second": trainer.tokens_seen / max(trainer.train_seconds, 1e-9),
                 **peak_memory_mb(trainer.device)},
        "final_valid": valid,
    }
    atomic_write_json(trainer.run.run_json, summary)
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run config YAML (see della/config.py)")
    p.add_argument("--out", required=True, help="run directory")


def run(args: argparse.Namespace) -> None:
    summary = train(RunConfig.load(args.config), Path(args.out))
    if summary is not None:
        log.info("trained %s: %d steps, final valid %s", summary["config"]["model"], summary["steps"],
                 summary["final_valid"])
