"""The torchrun path on CUDA: NCCL across processes (one GPU each) equals one process with the
doubled batch; a single-GPU torchrun trains on the card with the CUDA defaults (fused AdamW, MFU).
Skipped with the reason on a machine without enough GPUs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from tests.test_ddp import _config, _losses

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0


def _cuda_config(corpus, path, model, batch_size, **train):
    _config(corpus, path, model, batch_size)
    cfg = yaml.safe_load(path.read_text())
    cfg["train"].update(device="cuda", **train)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _torchrun(nproc: int, cfg, out) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "della", "train", "--config", str(cfg), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.skipif(GPUS < 1, reason="no CUDA device: the CUDA torchrun path needs a GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_torchrun_on_one_gpu_trains_on_the_card_with_the_cuda_defaults(corpus, tmp_path, precision):
    cfg = _cuda_config(corpus, tmp_path / "run.yaml", "della", 16, precision=precision)
    _torchrun(1, cfg, tmp_path / "run")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["provenance"]["device"]["type"] == "cuda"
    assert run["speed"]["fused_adam"] is True and run["speed"]["precision"] == precision
    assert run["cost"]["cuda_max_allocated_mb"] > 0
    name = torch.cuda.get_device_name(0)
    if run["cost"]["peak_tflops"] is None:
        assert name in run["cost"]["mfu_note"]
    else:
        assert 0 < run["cost"]["mfu"] < 1
    assert len(_losses(tmp_path / "run")) == 12


@pytest.mark.skipif(GPUS < 2, reason=f"NCCL needs one GPU per process; {GPUS} visible")
@pytest.mark.parametrize("model, tolerance", [("gpt2", 1e-4), ("della", 0.05)])
def test_two_nccl_processes_match_one_process_with_the_doubled_batch(corpus, tmp_path, model, tolerance):
    """As tests/test_ddp.py with gloo; the step sums are all-reduced as CUDA tensors. fp32 on GPUs
    (TF32 off) reorders sums across the two batches, hence 1e-4 for gpt2."""
    _torchrun(2, _cuda_config(corpus, tmp_path / "ddp.yaml", model, 8), tmp_path / "ddp")
    _torchrun(1, _cuda_config(corpus, tmp_path / "one.yaml", model, 16), tmp_path / "one")
    ddp, one = _losses(tmp_path / "ddp"), _losses(tmp_path / "one")
    assert len(ddp) == len(one) == 12
    assert abs(ddp[-1] - one[-1]) <= tolerance * abs(one[-1])
    run = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run["provenance"]["world_size"] == 2 and run["provenance"]["device"]["type"] == "cuda"


@pytest.mark.skipif(GPUS < 1, reason="no CUDA device: resuming on a GPU needs one")
def test_a_gpu_run_killed_in_epoch_2_resumes_from_its_checkpoint(corpus, tmp_path, monkeypatch):
    """The checkpoint loads to the host: its RNG states must (torch.set_rng_state takes only a CPU
    tensor; loading them onto the GPU made every resume on a GPU crash). The resumed run ends with
    the uninterrupted run's steps and log length (GPU kernels need not repeat bit for bit)."""
    from della.train import Trainer, train
    from tests.test_train import _log, run_config

    cfg = run_config(corpus, device="cuda")
    whole = train(cfg, tmp_path / "whole")
    original = Trainer._train_epoch

    def killed_in_epoch_2(self, bar):
        original(self, bar)
        if self.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_train_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed")
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    resumed = train(cfg, tmp_path / "resumed")
    assert resumed["resumed_from"]["epoch"] == 1
    assert resumed["steps"] == whole["steps"] and len(_log(tmp_path / "resumed")) == len(_log(tmp_path / "whole"))
