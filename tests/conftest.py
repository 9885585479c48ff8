"""Shared fixtures: tiny models built in the test (no hub), and the path of ../shared/data."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from della.cli import main as della_cli
from della.config import BackboneConfig
from della.models.base import Vocab, build_model

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
VOCAB = Vocab(size=50, bos_id=1, eos_id=2, pad_id=0)
TINY = BackboneConfig(n_layer=3, n_embd=32, n_head=2, n_positions=32, dropout=0.0)


def tiny_model(name: str, seed: int = 0, conditional: bool = False, **model_args):
    torch.manual_seed(seed)
    return build_model(name, model_args, VOCAB, backbone_config=TINY, conditional=conditional).eval()


def hf_gpt2(backbone, head: bool = False):
    """Hugging Face's GPT2Model (GPT2LMHeadModel, tied, with `head`) holding `backbone`'s weights."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    config = GPT2Config.from_dict(backbone.gpt2.config.to_dict())
    hf = GPT2LMHeadModel(config) if head else GPT2Model(config)
    (hf.transformer if head else hf).load_state_dict(backbone.gpt2.state_dict())
    if head:
        hf.tie_weights()
    return hf.eval()


def hf_bart(backbone):
    """Hugging Face's BartForConditionalGeneration holding a BartBackbone's weights and logits bias."""
    from transformers import BartConfig, BartForConditionalGeneration

    hf = BartForConditionalGeneration(BartConfig.from_dict(backbone.bart.config.to_dict()))
    hf.model.load_state_dict(backbone.bart.state_dict())
    hf.final_logits_bias.copy_(backbone.final_logits_bias)
    return hf.eval()


def random_batch(b: int = 4, t: int = 9, seed: int = 0, pad_last: int = 3):
    """Sentences [<s>, tokens..., </s>] right-padded; the last row is shorter by pad_last."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB.size, (b, t), generator=g)
    ids[:, 0] = VOCAB.bos_id
    ids[:, -1] = VOCAB.eos_id
    mask = torch.ones(b, t)
    if pad_last:
        ids[-1, t - pad_last - 1] = VOCAB.eos_id
        ids[-1, t - pad_last:] = VOCAB.pad_id
        mask[-1, t - pad_last:] = 0
    return ids, mask


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (the benchmark data lives beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A tiny prepared synthetic corpus (96/24/24 sentences) and its trained BPE tokenizer."""
    root = tmp_path_factory.mktemp("corpus")
    della_cli(["prepare-data", "--source", "synthetic", "--n-train", "96", "--n-valid", "24", "--n-test", "24",
               "--out", str(root / "data")])
    della_cli(["tokenizer", "--data", str(root / "data"), "--vocab-size", "300", "--out", str(root / "tok")])
    return root


def snakemake(workdir: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """The repo's workflow in `workdir` (outputs and .snakemake/ there), no profile leaking in."""
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                           "--workflow-profile", "none", *args], capture_output=True, text=True, timeout=timeout)


def read_table(workdir: Path, name: str = "table1", experiment: str = "default") -> dict[str, dict[str, str]]:
    """model -> row of results/<experiment>/tables/<name>.csv (the model rows: no Human or paper row)"""
    with open(workdir / "results" / experiment / "tables" / f"{name}.csv", newline="") as f:
        return {row["model"]: row for row in csv.DictReader(f) if row["kind"] == "model"}


@pytest.fixture(scope="session")
def default_dag(tmp_path_factory) -> Path:
    """The embedded default DAG, run once per session with `--cores 2` (minutes); what it printed is
    kept in snakemake-output.txt beside its results."""
    workdir = tmp_path_factory.mktemp("default-dag")
    start = time.perf_counter()
    proc = snakemake(workdir, "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-6000:]
    (workdir / "snakemake-output.txt").write_text(proc.stdout + proc.stderr)
    print(f"\n[e2e] embedded default DAG, local --cores 2: {time.perf_counter() - start:.0f} s")
    return workdir
