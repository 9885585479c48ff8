"""`python -m della train --config run.yaml --out RUN_DIR`: train one model, resumably.

AdamW, gradient accumulation, the official cyclical β schedule (or constant β), a JSONL line per
optimizer step, a checkpoint after every finite epoch (the last two are kept). A checkpoint
records the fingerprint of its training recipe (the config keys that determine the weights, and
the checksums of the data and tokenizer); a rerun resumes it only when the fingerprint matches
(`train.resume`, README "Resuming") and then ends with the same numbers as an uninterrupted run:
batch order is a function of (seed, epoch), the RNG states are checkpointed and validation draws
from its own seeded stream. Checkpoints load with `weights_only=True` (plain data and tensors).

Data-parallel: `torchrun --nproc_per_node N -m della train ...` runs the same command with
DistributedDataParallel (NCCL on GPUs, gloo on CPUs). `train.batch_size` is per process, so the
global batch is N times larger; rank 0 alone writes logs, checkpoints and the model.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import hashlib
import json
import logging
import math
import os
import pickle
import random
import resource
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from della import host_memory
from della.batches import (EncodedSplit, collate_batch, encode_split, length_sorted_batches, rank_batches,
                           shuffled_batches)
from della.config import ConfigError, RunConfig, TrainConfig
from della.flops import forward_flops, matmul_precision, peak_tflops
from della.io import atomic_write_binary, atomic_write_json, atomic_write_text, md5sum, naming_a_full_disk
from della.models.base import LatentModel, Vocab, build_model
from della.provenance import provenance
from della.run import RunDir, setup

log = logging.getLogger(__name__)


class BetaSchedule:
    """β per optimizer step. `cyclical` is the official code's (reference §4): with period C
    epochs, β = β0 in epochs where (epoch mod C) < C//2; otherwise after each optimizer step
    β += (β_max - β0) / ((C//2) * S / 2), capped at β_max; S = optimizer steps per epoch.
    `monotonic` ramps once, linearly from β0 to β_max over the first W = warmup_epochs epochs
    (W * S steps), then holds β_max; `constant` holds β_max."""

    KINDS = ("cyclical", "monotonic", "constant")

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int):
        if cfg.beta_schedule not in self.KINDS:
            raise ValueError(f"train.beta_schedule = {cfg.beta_schedule!r}; expected one of {self.KINDS}")
        if cfg.beta_schedule == "cyclical" and cfg.cycle_epochs < 2:
            raise ValueError(f"train.cycle_epochs = {cfg.cycle_epochs}: the cyclical schedule needs C >= 2")
        if cfg.beta_schedule == "monotonic" and cfg.warmup_epochs <= 0:
            raise ValueError(f"train.warmup_epochs = {cfg.warmup_epochs}: the monotonic schedule needs W > 0")
        self.cfg = cfg
        ramp_steps = {"cyclical": (cfg.cycle_epochs // 2) * steps_per_epoch / 2,
                      "monotonic": cfg.warmup_epochs * steps_per_epoch}.get(cfg.beta_schedule, 1)
        self.ramp = (cfg.beta - cfg.beta_0) / ramp_steps

    def initial(self) -> float:
        return self.cfg.beta if self.cfg.beta_schedule == "constant" else self.cfg.beta_0

    def after_step(self, beta: float, epoch: int) -> float:
        if self.cfg.beta_schedule == "constant":
            return beta
        if self.cfg.beta_schedule == "cyclical" and epoch % self.cfg.cycle_epochs < self.cfg.cycle_epochs // 2:
            return self.cfg.beta_0
        return min(self.cfg.beta, beta + self.ramp)


def split_path(cfg: RunConfig, split: str) -> Path:
    """{split}.txt (sentences), or {split}.jsonl (source/target pairs) for a conditional task."""
    return Path(cfg.data_dir) / f"{split}.{'jsonl' if cfg.task == 'conditional' else 'txt'}"


def load_split(cfg: RunConfig, split: str, tokenizer, max_lines: int | None = None,
               positions: int | None = None) -> EncodedSplit:
    """A split's sentences, or for a conditional task its pairs laid out for the backbone, whose
    encoder has `positions` positions (a BART source longer than that is an error naming its line)."""
    from della.data.conditional import encode_pairs, read_pairs
    from della.data.corpus import read_lines

    path = split_path(cfg, split)
    if cfg.task == "conditional":
        return encode_pairs(read_pairs(path)[:max_lines], tokenizer, cfg.train.max_length, str(path),
                            layout=cfg.backbone.kind, max_source_length=positions)
    return encode_split(read_lines(path)[:max_lines], tokenizer, cfg.train.max_length, str(path))


def new_model(cfg: RunConfig, tokenizer) -> LatentModel:
    vocab = Vocab(size=tokenizer.vocab_size, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                  pad_id=tokenizer.pad_id)
    model = build_model(cfg.model, cfg.model_args, vocab, backbone_config=cfg.backbone,
                        conditional=cfg.task == "conditional")
    if cfg.train.max_length > model.backbone.n_positions:
        raise ValueError(f"train.max_length ({cfg.train.max_length}) exceeds the backbone's "
                         f"{model.backbone.n_positions} positions (backbone.n_positions)")
    return model


FUSED_ADAM_DEVICES = ("cuda", "cpu")


def use_fused_adam(cfg: TrainConfig, device: torch.device) -> bool:
    """train.fused_adam: auto -> the fused kernel where torch has one for the device: on CUDA one
    launch for all parameters, on the CPU one pass over each tensor's memory (the plain AdamW makes
    ten, which costs a 28M-element stacked LMF weight twice the time of twelve cache-sized ones)."""
    return device.type in FUSED_ADAM_DEVICES if cfg.fused_adam == "auto" else cfg.fused_adam


def fused_kernel(optimizer: torch.optim.Optimizer) -> bool:
    return bool(optimizer.param_groups[0].get("fused"))


def make_optimizer(model: LatentModel, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
                             fused=use_fused_adam(cfg, device))


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """On CUDA through pinned memory, so the copy does not wait for the queued steps."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels: CUDA runs asynchronously, so a timer around GPU work needs it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compile_model(model: nn.Module, mode: bool | str) -> nn.Module:
    """train.compile: torch.compile with the eager RNG stream (fallback_random), so compiled and eager
    steps draw the same noise; `reduce-overhead` also records each step's kernels as CUDA graphs and
    replays them, one launch a graph (on CUDA; the CPU has none, so there it is `true`). A graph is
    recorded per distinct batch shape."""
    if not mode:
        return model
    return torch.compile(model, options={"fallback_random": True, "triton.cudagraphs": mode == "reduce-overhead"})


def begin_step(mode: bool | str) -> None:
    """Before each forward of a model that compile_model(model, mode) made: under CUDA graphs a new
    step, whose replay may overwrite the last step's outputs (read before this)."""
    if mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()


def autocast(device: torch.device, precision: str):
    """train.precision: bf16 autocasts the forward (matmuls in bf16); the models keep the KL,
    log-densities and cross-entropy in fp32 (della.models.base). fp32 leaves every op untouched."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def rng_state() -> dict:
    """Every RNG stream as tensors, lists and numbers, so a checkpoint loads with weights_only=True."""
    version, python_state, gauss = random.getstate()
    _, key, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": [version, list(python_state), gauss],
             "numpy": [torch.from_numpy(key.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def validate(model: LatentModel, split: EncodedSplit, batch_size: int, device, seed: int,
             precision: str = "fp32") -> dict:
    """Mean per-sentence CE and KL (one posterior sample) on a split, β-free. The posterior noise
    comes from a stream seeded here, so validation never moves the training RNG: evaluate.* cannot
    change the trained weights, and a rerun of a finished run reproduces its final validation. The
    sums stay on the device (float64) until the end: one host sync, not one per batch."""
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # ce, kl
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast(device, precision):
        torch.manual_seed(seed)
        for idx in length_sorted_batches(split.sequences, batch_size):
            ids, mask, condition = collate_batch(split, idx, model.vocab.pad_id, device)
            out = model.loss(ids, mask, 1.0, condition)
            sums += torch.stack([out.ce.sum().double(), out.kl.sum().double()])
    model.train()
    ce, kl = (total / len(split.sequences) for total in sums.tolist())
    return {"ce": ce, "kl": kl}


def training_recipe(cfg: RunConfig, tokenizer, world_size: int) -> dict:
    """What determines the trained weights: the config's recipe plus the data and tokenizer checksums."""
    recipe = cfg.training_recipe()
    tokenizer_json = Path(cfg.tokenizer_dir) / "tokenizer.json"
    recipe["architecture"]["tokenizer"] = {
        "tokenizer.json": md5sum(tokenizer_json), "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id}
    recipe["data"] = {split_path(cfg, split).name: md5sum(split_path(cfg, split)) for split in ("train", "valid")}
    recipe["optimisation"]["world_size"] = world_size
    return recipe


def fingerprint(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def recipe_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for every leaf that differs (dotted keys)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += recipe_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changes


def checkpoint_fingerprint(directory: Path) -> str:
    """The recipe fingerprint of a checkpoint directory's newest readable checkpoint ("unreadable")."""
    for name in ("last.pt", "previous.pt"):
        try:
            return load_checkpoint(directory / name)["fingerprint"]
        except (CheckpointError, FileNotFoundError):
            continue
    return "unreadable"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


class UnsafeCheckpoint(CheckpointError):
    """Never skipped like a corrupt file: a pickle with code in it is worth stopping for."""


CHECKPOINT_KEYS = {"model", "optimizer", "epoch", "step", "beta", "log_lines", "train_seconds", "tokens_seen",
                   "rng", "fingerprint", "recipe", "warm_start"}


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's state, on the host (torch.set_rng_state takes only a CPU tensor; the model and
    the optimizer copy their states to their own device); CheckpointError for a corrupt one,
    UnsafeCheckpoint for a foreign pickle."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise UnsafeCheckpoint(
                f"{path}: refused to load: it holds objects other than tensors and plain data, which "
                f"della-bench never writes, and unpickling them could run code (a foreign or tampered "
                f"file, or one written before checkpoints were made safe). Delete it, or set "
                f"train.resume: never to move it aside and train from scratch") from None
        raise CheckpointError(f"{path}: corrupt checkpoint ({err})") from None
    except Exception as err:  # torch reports a truncated zip as RuntimeError, garbage as KeyError, ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({reason})") from None
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= set(state):
        raise CheckpointError(f"{path}: not a della-bench checkpoint (missing keys)")
    return state


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
            if self.local_rank >= torch.cuda.device_count():
                raise ValueError(f"torchrun started more processes per node than the {torch.cuda.device_count()} "
                                 f"visible GPU(s): NCCL needs one GPU per process (LOCAL_RANK {self.local_rank})")
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
        self.model = new_model(cfg, self.tokenizer).to(self.device)
        positions = self.model.backbone.n_positions
        self.train_split = load_split(cfg, "train", self.tokenizer, cfg.train.max_train_lines, positions)
        self.valid_split = load_split(cfg, "valid", self.tokenizer, cfg.evaluate.max_lines, positions)
        tc = cfg.train
        n = len(self.train_split.sequences)
        self.global_batch = tc.batch_size * self.dist.world
        if n < self.global_batch:
            raise ValueError(f"{self.train_split.path}: {n} examples, fewer than one batch "
                             f"(train.batch_size = {tc.batch_size} x {self.dist.world} processes)")
        micro_batches = n // self.global_batch + (n % self.global_batch >= self.dist.world)  # as rank_batches
        # an epoch's last, partial group of micro-batches steps too, so S (the β ramp's unit) is rounded up:
        # the official code's S = floor(micro-batches / grad_accum) differs only where grad_accum does not divide
        self.steps_per_epoch = -(-micro_batches // tc.grad_accum)
        torch.manual_seed(cfg.seed * 1_000 + self.dist.rank)  # own dropout and posterior noise per rank
        self.trained = self.model if self.dist.world == 1 else DistributedDataParallel(
            self.model, find_unused_parameters=self._has_unused_parameters())
        self.trained = compile_model(self.trained, tc.compile)
        self.optimizer = make_optimizer(self.model, tc, self.device)
        self.schedule = BetaSchedule(tc, self.steps_per_epoch)
        self.epoch, self.step, self.beta, self.log_lines = 0, 0, self.schedule.initial(), 0
        self.train_seconds, self.tokens_seen = 0.0, 0
        self.recipe = training_recipe(cfg, self.tokenizer, self.dist.world)
        self.fingerprint = fingerprint(self.recipe)
        self.warm_start = None  # set when train.resume = weights-only took another recipe's weights
        self.resumed_from = None
        self.skipped_corrupt: dict[Path, str] = {}  # unreadable checkpoint -> why, that resume fell back past
        self.earlier_processes: list[dict] = []  # the processes that trained the resumed weights
        self.started_at, self.provenance = (0, 0), {}  # this process: (epoch, step) it began at, on what

    def close(self) -> None:
        """Drop the DDP wrapper, then the process group. Its reducer holds the group too; were it the
        last holder, the group's destructor would run with the GIL held and wait for gloo's worker
        threads, which may need the GIL to free a finished collective's tensors: a deadlock at exit
        (1 torchrun run in ~20 hung so). Dropped by destroy_process_group, the group is freed without the GIL."""
        self.trained = None
        gc.collect()  # DDP's module graph has reference cycles
        self.dist.close()

    def _has_unused_parameters(self) -> bool:
        """One probe step (e.g. DELLA's first prior net is unused under p(z_1) = N(0, I))."""
        ids, mask, condition = collate_batch(self.train_split, [0, 1], self.model.vocab.pad_id, self.device)
        self.model.loss(ids, mask, 1.0, condition).loss.backward()
        unused = any(p.grad is None for p in self.model.parameters() if p.requires_grad)
        self.model.zero_grad(set_to_none=True)
        return unused

    # --- checkpointing ---------------------------------------------------------------------------
    def processes(self) -> list[dict]:
        """Every process that trained these weights so far, this one last: the epochs and steps it ran
        and its provenance (commit, versions, device), so a run resumed elsewhere says so."""
        epoch, step = self.started_at
        return [*self.earlier_processes, {"from_epoch": epoch, "to_epoch": self.epoch, "from_step": step,
                                          "to_step": self.step, "provenance": self.provenance}]

    def save_checkpoint(self) -> None:
        """After a finite epoch: last.pt becomes previous.pt, then the new state is written as last.pt."""
        rng = self.dist.gather(rng_state())  # every rank's streams, so a resume is exact
        if self.dist.is_main:
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "epoch": self.epoch, "step": self.step, "beta": self.beta, "log_lines": self.log_lines,
                     "train_seconds": self.train_seconds, "tokens_seen": self.tokens_seen, "rng": rng,
                     "fingerprint": self.fingerprint, "recipe": json.dumps(self.recipe, sort_keys=True),
                     "warm_start": self.warm_start, "processes": self.processes()}
            if self.run.checkpoint.exists():
                os.replace(self.run.checkpoint, self.run.previous_checkpoint)
            atomic_write_binary(self.run.checkpoint, lambda f: torch.save(state, f))
        self.dist.barrier()

    def resume(self) -> None:
        """Continue from the newest usable checkpoint (train.resume), or move the others aside; under
        train.resume = auto, checkpoints of this recipe moved aside earlier come back first."""
        found, stale = self._usable_checkpoint()
        kept = self.run.stale_checkpoints_of(self.fingerprint)
        if found is None and self.cfg.train.resume == "auto" and kept.is_dir():
            self.dist.barrier()  # every rank has read the checkpoints before rank 0 may move them
            if self.dist.is_main:
                self._restore_checkpoints(kept, stale)
            self.dist.barrier()  # and rank 0 has put them back before any rank reads again
            found, stale = self._usable_checkpoint()
        self.dist.barrier()  # every rank has read the checkpoints before rank 0 may move them
        if found is None:
            if self.dist.is_main:
                if stale:
                    self._move_checkpoints_aside(stale)
                self._truncate_log(0)
            return
        path, state = found
        if self.dist.is_main:
            for corrupt in self.skipped_corrupt:  # else the next checkpoint rotates it over the good previous.pt
                aside = corrupt.with_name(corrupt.name + ".corrupt")
                os.replace(corrupt, aside)
                log.warning("moved the unreadable %s aside to %s", corrupt, aside.name)
        warm = state["fingerprint"] != self.fingerprint
        self.model.load_state_dict(state["model"])
        if warm:  # weights-only: a fresh optimizer at the current train.*, this run's seeded RNG streams
            self.warm_start = {"checkpoint": str(path), "epoch": state["epoch"], "fingerprint": state["fingerprint"]}
        else:
            try:
                self.optimizer.load_state_dict(state["optimizer"])
            except ValueError as err:  # another parameter layout: a checkpoint of another version of the code
                raise CheckpointError(f"{path}: its optimizer state does not fit this model's parameters ({err}); "
                                      f"it was written by another version of della: set train.resume: never "
                                      f"(or delete {self.run.checkpoint_dir}) to retrain") from err
            self.warm_start = state["warm_start"]
            set_rng_state(state["rng"][self.dist.rank])
            if fused_kernel(self.optimizer) != use_fused_adam(self.cfg.train, self.device):
                log.warning("train.fused_adam = %s does not reach a resumed optimizer: it keeps its checkpoint's "
                            "AdamW kernel (fused: %s; run.json speed.fused_adam records it)",
                            self.cfg.train.fused_adam, fused_kernel(self.optimizer))
        for key in ("epoch", "step", "beta", "log_lines", "train_seconds", "tokens_seen"):
            setattr(self, key, state[key])
        self.earlier_processes = state.get("processes") or [  # a checkpoint written before they were recorded
            {"from_epoch": None, "to_epoch": state["epoch"], "from_step": None, "to_step": state["step"],
             "provenance": None}]
        if self.dist.is_main:
            self._truncate_log(self.log_lines)  # drop lines of the interrupted epoch
        self.resumed_from = {"checkpoint": str(path), "epoch": self.epoch, "weights_only": warm}
        log.info("resumed from %s after epoch %d (step %d)%s", path, self.epoch, self.step,
                 ": its weights only, with a fresh optimizer (train.resume = weights-only)" if warm else "")

    def _usable_checkpoint(self) -> tuple[tuple[Path, dict] | None, str | None]:
        """((path, state) of the newest checkpoint train.resume allows, None); a corrupt one falls back
        to the previous one. (None, why) when there are checkpoints but none may be resumed."""
        paths = [p for p in (self.run.checkpoint, self.run.previous_checkpoint) if p.exists()]
        if not paths:
            return None, None
        if self.cfg.train.resume == "never":
            return None, "train.resume = never"
        unusable = []
        self.skipped_corrupt = {}
        for path in paths:
            try:
                state = load_checkpoint(path)
            except UnsafeCheckpoint:
                raise
            except CheckpointError as err:
                log.warning("%s; skipping it", err)
                self.skipped_corrupt[path] = str(err)
                continue
            why = self._why_not_resumable(state)
            if why is None:
                if self.skipped_corrupt:
                    log.warning("falling back to the previous good checkpoint %s", path)
                return (path, state), None
            unusable.append(f"{path.name}: {why}")
        if not unusable:
            raise CheckpointError(f"{'; '.join(self.skipped_corrupt.values())}; no good checkpoint is left: delete "
                                  f"{self.run.checkpoint_dir} or set train.resume: never to train from scratch")
        return None, "; ".join(unusable)

    def _why_not_resumable(self, state: dict) -> str | None:
        if state["epoch"] > self.cfg.train.epochs:
            return f"written after epoch {state['epoch']}, beyond train.epochs = {self.cfg.train.epochs}"
        if state["fingerprint"] == self.fingerprint:
            return None
        old = json.loads(state["recipe"])
        if self.cfg.train.resume != "weights-only":
            return f"the training recipe changed ({', '.join(recipe_changes(old, self.recipe))})"
        if old["architecture"] != self.recipe["architecture"]:
            arch = ", ".join(recipe_changes(old["architecture"], self.recipe["architecture"]))
            raise CheckpointError(f"train.resume = weights-only: the weights of {self.run.checkpoint_dir} do not "
                                  f"fit this model ({arch}); set train.resume: never to train from scratch")
        return None

    def _move_checkpoints_aside(self, why: str) -> None:
        """checkpoint/ and its train log -> checkpoint.stale/<its recipe's fingerprint>/, where a later
        run of that recipe finds them (`_restore_checkpoints`); nothing of another recipe is lost."""
        stale = self.run.stale_checkpoints_of(checkpoint_fingerprint(self.run.checkpoint_dir))
        shutil.rmtree(stale, ignore_errors=True)
        stale.parent.mkdir(exist_ok=True)
        if self.run.train_log.exists():
            shutil.copy2(self.run.train_log, self.run.checkpoint_dir / self.run.train_log.name)
        os.replace(self.run.checkpoint_dir, stale)
        log.warning("not resuming (%s): moved %s aside to %s; training from scratch",
                    why, self.run.checkpoint_dir, stale)

    def _restore_checkpoints(self, kept: Path, why: str | None) -> None:
        """This recipe's checkpoints (and train log) back from checkpoint.stale/, the current ones aside."""
        if self.run.checkpoint_dir.exists():
            self._move_checkpoints_aside(why or "no usable checkpoint")
        if (kept / self.run.train_log.name).exists():
            os.replace(kept / self.run.train_log.name, self.run.train_log)
        os.replace(kept, self.run.checkpoint_dir)
        log.warning("restored the checkpoints of this training recipe from %s", kept)

    def _truncate_log(self, n: int) -> None:
        lines = self.run.train_log.read_text().splitlines(keepends=True) if self.run.train_log.exists() else []
        atomic_write_text(self.run.train_log, "".join(lines[:n]))

    def _log(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        with naming_a_full_disk(self.run.train_log), self.run.train_log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.log_lines += 1

    # --- the loop --------------------------------------------------------------------------------
    def fit(self) -> dict:
        tc = self.cfg.train
        self.run.root.mkdir(parents=True, exist_ok=True)
        self.resume()
        self.started_at = (self.epoch, self.step)
        self.provenance = {**provenance(self.device), "world_size": self.dist.world}
        self.model.train()
        total = tc.epochs * self.steps_per_epoch
        valid = None
        with tqdm(total=total, initial=self.step, desc=f"train {self.cfg.model}", unit="step",
                  mininterval=2.0, disable=not self.dist.is_main) as bar:
            while self.epoch < tc.epochs:
                start = time.perf_counter()
                self._train_epoch(bar)
                self.train_seconds += time.perf_counter() - start
                valid = self.dist.gather(self._validate() if self.dist.is_main else None)[0]
                self._check_finite(valid)
                if self.dist.is_main:
                    self._log({"split": "valid", "epoch": self.epoch, "step": self.step, **valid})
                self.epoch += 1
                self.save_checkpoint()
                if self.dist.is_main:
                    self._report_progress(valid, time.perf_counter() - start)
        if valid is None and self.dist.is_main:  # a finished run reused: its final validation, recomputed
            valid = self._validate()
        return valid

    def _report_progress(self, valid: dict, epoch_seconds: float) -> None:
        """One line per epoch (the workflow shows these on the terminal; the tqdm bar stays in the log)."""
        left = (self.cfg.train.epochs - self.epoch) * epoch_seconds
        log.info("progress %s: epoch %d/%d done, step %d, valid ce %.3f kl %.3f, ETA %s",
                 self.run.root, self.epoch, self.cfg.train.epochs, self.step,
                 valid["ce"], valid["kl"], time.strftime("%H:%M:%S", time.gmtime(left)))

    def _validate(self) -> dict:
        return validate(self.model, self.valid_split, self.cfg.evaluate.batch_size, self.device, self.cfg.seed,
                        self.cfg.train.precision)

    def _check_finite(self, valid: dict) -> None:
        """Only a finite epoch is checkpointed: finite validation and finite weights."""
        bad = {k: v for k, v in valid.items() if not math.isfinite(v)}
        if not bad and all(torch.isfinite(p).all() for p in self.model.parameters()):
            return
        what = f"validation {bad}" if bad else "weights"
        raise FloatingPointError(f"non-finite {what} after epoch {self.epoch + 1}; {self._restart_hint()}")

    def _restart_hint(self) -> str:
        """Where the last good checkpoint is and the two ways to restart."""
        good = next((p for p in (self.run.checkpoint, self.run.previous_checkpoint) if p.exists()), None)
        if good is None:
            return ("no epoch ended finite, so there is no checkpoint: lower train.lr (or set train.grad_clip) "
                    "and rerun; a changed training recipe trains from scratch")
        return (f"the last good checkpoint is {good} (after epoch {self.epoch}). To train from "
                f"scratch, change the settings (e.g. lower train.lr) and rerun: a changed recipe never resumes "
                f"(or set train.resume: never). To continue from that checkpoint's weights with a fresh "
                f"optimizer at the new settings, also set train.resume: weights-only")

    def _train_epoch(self, bar) -> None:
        """The hot loop never waits for the device: each step's sums (loss, ce, tokens, n, kl per
        group) accumulate in a device tensor and reach the host once per logged step (and at the
        end of the epoch), where the log lines and the finiteness check of every step since are done."""
        tc, seqs = self.cfg.train, self.train_split.sequences
        batches = rank_batches(shuffled_batches(len(seqs), self.global_batch, seed=self.cfg.seed * 100_003 + self.epoch),
                               self.dist.rank, self.dist.world)
        pending = []  # (step, beta, lr, device sums) of the steps since the last host sync
        for first in range(0, len(batches), tc.grad_accum):
            group = batches[first: first + tc.grad_accum]
            self.optimizer.zero_grad(set_to_none=True)
            sums = torch.zeros(4 + self.model.n_groups, dtype=torch.float64, device=self.device)
            # β as a device tensor: a compiled step does not recompile when it changes, and it is no
            # CPU input (a changing Python float becomes one, which inductor keeps out of CUDA graphs)
            beta = to_device(torch.tensor(self.beta), self.device)
            for i, (idx, weight) in enumerate(group):
                ids, mask, condition = self._batch(idx)
                last = i == len(group) - 1
                sync = contextlib.nullcontext() if last or self.dist.world == 1 else self.trained.no_sync()
                with sync:
                    begin_step(tc.compile)
                    with autocast(self.device, tc.precision):
                        out = self.trained(ids, mask, beta, condition)
                    (out.loss * weight / len(group)).backward()
                sums[:3] += torch.stack([out.loss.detach().double() * len(idx), out.ce.detach().sum().double(),
                                         out.n_tokens.sum().double()])
                sums[3] += len(idx)
                sums[4:] += out.kl.detach().sum(0).double()
            pending.append((self.step, self.beta, self.optimizer.param_groups[0]["lr"], self.dist.sum(sums)))
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
            self.optimizer.step()
            self.step += 1
            self.beta = self.schedule.after_step(self.beta, self.epoch)
            bar.update(1)
            if (self.step - 1) % tc.log_every == 0 or first + tc.grad_accum >= len(batches):
                self._flush(pending, bar)
                pending = []

    def _batch(self, idx: list[int]):
        """Training examples idx as (ids, mask, condition) on the device."""
        ids, mask, condition = collate_batch(self.train_split, idx, self.model.vocab.pad_id,
                                             multiple=self.cfg.train.pad_to_multiple)
        move = functools.partial(to_device, device=self.device)
        return move(ids), move(mask), None if condition is None else condition.map(move)

    def _flush(self, pending: list, bar) -> None:
        """One host sync for the steps in `pending`: check each is finite, count its tokens, log it."""
        rows = torch.stack([sums for *_, sums in pending]).tolist()
        for (step, beta, lr, _), (loss, ce, tokens, n, *kl_groups) in zip(pending, rows):
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite loss ({loss / n}) in epoch {self.epoch + 1}, "
                                         f"step {step}; {self._restart_hint()}")
            self.tokens_seen += int(tokens)
            if step % self.cfg.train.log_every == 0:
                per_group = [k / n for k in kl_groups]
                self._log({"split": "train", "epoch": self.epoch, "step": step, "beta": beta, "lr": lr,
                           "loss": loss / n, "ce": ce / n, "ce_per_token": ce / max(tokens, 1),
                           "kl": sum(per_group), "kl_groups": per_group})
        bar.set_postfix(ce=f"{ce / n:.2f}", beta=f"{self.beta:.2f}", refresh=False)


def peak_memory_mb(device: torch.device) -> dict:
    out = {"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def record_config(cfg: RunConfig, run: RunDir) -> None:
    """The run dir keeps the config it was last trained with (evaluate and generate read it); the
    checkpoints' fingerprint, not this file, decides what a rerun may reuse."""
    try:
        same = RunConfig.load(run.config) == cfg
    except ConfigError:  # absent, or written by another version
        same = False
    if not same:
        atomic_write_text(run.config, cfg.dump())


def train(cfg: RunConfig, out: Path) -> dict | None:
    """Train, save the model and write run.json; returns the run summary (None on ranks > 0)."""
    trainer = Trainer(cfg, out)
    try:
        if trainer.dist.is_main:
            record_config(cfg, trainer.run)
        wall = time.perf_counter()
        valid = trainer.fit()
        summary = _finish(trainer, valid, wall) if trainer.dist.is_main else None
        trainer.dist.barrier()  # ranks leave together: tearing gloo down while a peer still works can hang
        return summary
    finally:
        trainer.close()


def run_matmul_precision(tc: TrainConfig, device: torch.device) -> str:
    """The precision the matmuls run at (TF32 only where CUDA allows it), which sets the peak for MFU."""
    return matmul_precision(tc.precision, device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)


def speed_settings(tc: TrainConfig, device: torch.device, optimizer: torch.optim.Optimizer) -> dict:
    """The speed switches as this run resolved them (run.json `speed`); the AdamW kernel is the
    optimizer's own (a resumed optimizer keeps its checkpoint's)."""
    return {"precision": tc.precision, "matmul": run_matmul_precision(tc, device),
            "fused_adam": fused_kernel(optimizer), "compile": tc.compile, "pad_to_multiple": tc.pad_to_multiple,
            "reuse_host_memory": host_memory.resolve(tc.reuse_host_memory, device),
            "attention": "torch.nn.functional.scaled_dot_product_attention"}


def utilisation(trainer: Trainer, tokens_per_second: float) -> dict:
    """Model FLOPs per predicted token (della.flops on an example of the split's mean lengths, over its
    mean predicted tokens: all but <s>, a CVAE's target only) and MFU = FLOP/s over the dense peak of
    every process's card, or null and why."""
    split, bb, cfg = trainer.train_split, trainer.model.backbone, trainer.cfg
    sequence = statistics.fmean(map(len, split.sequences))
    source = statistics.fmean(map(len, split.sources)) if split.conditional else 0
    predicted = (statistics.fmean(len(s) - t for s, t in zip(split.sequences, split.target_starts))
                 if split.conditional else sequence - 1)
    per_token = 3 * forward_flops(cfg.backbone.kind, bb.n_layer, bb.n_embd, trainer.model.vocab.size, sequence,
                                  source, latent=trainer.model.n_groups > 0) / max(predicted, 1)
    device = trainer.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak, why = peak_tflops(name, run_matmul_precision(trainer.cfg.train, device))
    mfu = None if peak is None else tokens_per_second * per_token / (peak * 1e12 * trainer.dist.world)
    return {"flops_per_token": per_token, "peak_tflops": peak, "mfu": mfu, **({"mfu_note": why} if why else {})}


def _finish(trainer: Trainer, valid: dict, wall: float) -> dict:
    cfg = trainer.cfg
    tokens_per_second = trainer.tokens_seen / max(trainer.train_seconds, 1e-9)
    trainer.model.save_pretrained(trainer.run.model)
    model = trainer.model
    summary = {
        "kind": "run",
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "provenance": trainer.provenance,
        "parameters": sum(p.numel() for p in model.parameters()),
        "latent": {"groups": model.n_groups, "size": model.latent_size},
        "data": {"train": trainer.train_split.summary(), "valid": trainer.valid_split.summary()},
        "steps": trainer.step, "epochs": trainer.epoch,
        "fingerprint": trainer.fingerprint, "resumed_from": trainer.resumed_from, "warm_start": trainer.warm_start,
        "processes": trainer.processes(),
        "speed": speed_settings(cfg.train, trainer.device, trainer.optimizer),
        "cost": {"train_seconds": trainer.train_seconds, "wall_seconds_this_process": time.perf_counter() - wall,
                 "tokens_seen": trainer.tokens_seen, "tokens_per_second": tokens_per_second,
                 **utilisation(trainer, tokens_per_second), **peak_memory_mb(trainer.device)},
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
