"""Every script in benchmarks/ runs to its end in its smallest mode (their numbers are measured and
printed by the scripts themselves, never asserted here): a refactor that breaks one fails here."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import metrics
from della import host_memory
from tests.conftest import REPO, SHARED_DATA


def run_benchmark(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, *args], cwd=REPO / "benchmarks", env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_train_speed_quick_prints_every_model_and_the_floor():
    out = run_benchmark("train_speed.py", "--quick", "--sizes", "a", "--precisions", "fp32,bf16")
    assert out.count("FLOP floor VAE/LM") == 2 and all(f"  {name} " in out for name in ("gpt2", "embed", "della"))


def test_train_speed_quick_conditional_on_both_backbones():
    out = run_benchmark("train_speed.py", "--quick", "--task", "conditional", "--sizes", "a")
    assert "CVAE on gpt2" in out and "CVAE on bart" in out


def test_host_memory_quick_compares_both_allocator_settings():
    if not host_memory.available():
        pytest.skip("train.reuse_host_memory needs glibc (Linux)")
    out = run_benchmark("host_memory.py", "--quick")
    assert all(f"  {name} " in out for name in ("gpt2", "embed", "della")) and out.count("speed-up") == 3


def test_iw_cost_times_both_estimators():
    out = run_benchmark("iw_cost.py", "--k", "2", "--batch", "2")
    assert "batched" in out and "naive" in out and "speed-up" in out


def test_metrics_speed_checks_the_fast_bleu_against_nltk_and_times_every_metric():
    if not (SHARED_DATA / "ptb").is_dir():
        pytest.skip(f"{SHARED_DATA / 'ptb'} is absent (the benchmark data lives beside the repo)")
    out = run_benchmark("metrics_speed.py", "--nltk-subset", "2", "--full-samples", "20")
    assert out.count("identical") == 2
    timed = set(re.findall(r"[\d.]+ s \((\w+)\)$", out, flags=re.M))  # "  BERTScore  26.19  1.4 s (bertscore)"
    assert timed == set(metrics.registry.names()), out[-3000:]
