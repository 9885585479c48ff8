"""The layout of a run directory and the loading shared by train, evaluate and generate.

results/<experiment>/runs/<dataset>/<model>/seed<seed>/
  config.yaml        the resolved run config (input)
  checkpoint/        last.pt and previous.pt: resume state after the last two finite epochs (model,
                     optimizer, RNG, β, log length, the fingerprint of the training recipe)
  checkpoint.stale/  <fingerprint>/: an earlier recipe's checkpoints and train log, moved aside when
                     training starts afresh, taken back when that recipe runs again
  model/             the final model (config.json + model.pt), self-describing
  train-log.jsonl    one line per optimizer step (and per-epoch validation lines)
  run.json           provenance, costs and training summary; written last
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from della import host_memory
from della.config import RunConfig
from della.provenance import resolve_device


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoint"

    @property
    def checkpoint(self) -> Path:
        return self.checkpoint_dir / "last.pt"

    @property
    def previous_checkpoint(self) -> Path:
        return self.checkpoint_dir / "previous.pt"

    @property
    def stale_checkpoints(self) -> Path:
        return self.root / "checkpoint.stale"

    def stale_checkpoints_of(self, fingerprint: str) -> Path:
        """The folder of one training recipe's checkpoints moved aside."""
        return self.stale_checkpoints / fingerprint[:16]

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def train_log(self) -> Path:
        return self.root / "train-log.jsonl"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup(cfg: RunConfig) -> torch.device:
    """The process's threads, seeds and host allocator for a run; returns its device."""
    torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.train.device)
    host_memory.apply(cfg.train.reuse_host_memory, device)
    return device


def load_trained(run_dir: str | Path, config_path: str | Path | None = None):
    """-> (run config, model in eval mode, tokenizer, device) of a finished run."""
    from della.data.tokenizer import load_tokenizer
    from della.models.base import LatentModel

    run = RunDir(Path(run_dir))
    if not run.model.exists():
        raise FileNotFoundError(f"{run.model}: no trained model (run `python -m della train` first)")
    cfg = RunConfig.load(config_path or run.config)
    device = setup(cfg)
    model = LatentModel.from_pretrained(run.model, map_location=device).to(device).eval()
    return cfg, model, load_tokenizer(cfg.tokenizer_dir), device
