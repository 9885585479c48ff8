"""The speed switches change no numbers: each against the plain path, fp32, 1e-5 relative (or exactly).

- the training loop keeps its sums on the device and syncs once per logged step: its log is
  bit-identical to a plain loop that reads every micro-batch with .item();
- fused AdamW (train.fused_adam) equals the plain AdamW;
- torch.compile (train.compile) equals the eager step;
- the backbone's SDPA attention equals a hand-written softmax attention.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from della.batches import collate, shuffled_batches
from della.config import TrainConfig
from della.models import backbone as backbone_module
from della.train import Trainer, make_optimizer, train, use_fused_adam
from tests.conftest import random_batch, tiny_model
from tests.test_train import run_config

CPU = torch.device("cpu")


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _assert_close(actual: list[torch.Tensor], expected: list[torch.Tensor], rtol: float = 1e-5) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert (a - e).norm() <= rtol * e.norm() + 1e-12


def _plain_loop(model, cfg, split, epoch: int = 0) -> list[tuple]:
    """The training loop written plainly (sync after every micro-batch): (loss, ce, kl_groups) per step."""
    tc, seqs = cfg.train, split.sequences
    optimizer = make_optimizer(model, tc, CPU)
    batches = shuffled_batches(len(seqs), tc.batch_size, seed=cfg.seed * 100_003 + epoch)
    steps = []
    for first in range(0, len(batches), tc.grad_accum):
        group = batches[first: first + tc.grad_accum]
        optimizer.zero_grad(set_to_none=True)
        loss = ce = n = 0.0
        kl = [0.0] * model.n_groups
        for idx in group:
            ids, mask = collate([seqs[j] for j in idx], model.vocab.pad_id)
            out = model(ids, mask, tc.beta)
            (out.loss / len(group)).backward()
            loss, ce, n = loss + out.loss.item() * len(idx), ce + out.ce.sum().item(), n + len(idx)
            kl = [a + b for a, b in zip(kl, out.kl.detach().sum(0).tolist())]
        optimizer.step()
        steps.append((loss / n, ce / n, [k / n for k in kl]))
    return steps


def test_the_training_log_equals_a_plain_synchronous_loop_bit_for_bit(corpus, tmp_path):
    cfg = run_config(corpus, epochs=1, beta_schedule="constant")
    trainer = Trainer(cfg, tmp_path / "run")
    model, rng = copy.deepcopy(trainer.model), torch.get_rng_state()
    trainer.fit()
    torch.set_rng_state(rng)
    expected = _plain_loop(model, cfg, trainer.train_split)
    logged = [json.loads(line) for line in (tmp_path / "run" / "train-log.jsonl").read_text().splitlines()]
    assert [(r["loss"], r["ce"], r["kl_groups"]) for r in logged if r["split"] == "train"] == expected


def test_log_every_thins_the_log_but_every_step_counts_its_tokens(corpus, tmp_path):
    cfg = run_config(corpus, epochs=1, grad_accum=1, log_every=4)  # 96 / 16 = 6 steps: steps 0 and 4 logged
    summary = train(cfg, tmp_path / "run")
    logged = [json.loads(line) for line in (tmp_path / "run" / "train-log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["split"] == "train"] == [0, 4]
    predicted = sum(len(s) - 1 for s in Trainer(cfg, tmp_path / "other").train_split.sequences)
    assert summary["cost"]["tokens_seen"] == predicted


def test_run_json_records_the_resolved_speed_switches_and_why_mfu_is_null(corpus, tmp_path):
    summary = train(run_config(corpus, epochs=1), tmp_path / "run")
    assert summary["speed"] == {"precision": "fp32", "matmul": "fp32", "fused_adam": False, "compile": False,
                                "attention": "torch.nn.functional.scaled_dot_product_attention"}
    cost = summary["cost"]
    assert cost["mfu"] is None and cost["peak_tflops"] is None and "not trained on a GPU" in cost["mfu_note"]
    assert cost["flops_per_token"] > 0


def test_fused_adam_auto_means_cuda_only():
    assert use_fused_adam(TrainConfig(), torch.device("cuda")) is True
    assert use_fused_adam(TrainConfig(), CPU) is False
    assert use_fused_adam(TrainConfig(fused_adam=True), CPU) is True
    assert use_fused_adam(TrainConfig(fused_adam=False), torch.device("cuda")) is False


def test_fused_adamw_equals_the_plain_adamw():
    models = [tiny_model("della").train() for _ in range(2)]
    optimizers = [make_optimizer(m, TrainConfig(fused_adam=fused), CPU) for m, fused in zip(models, (False, True))]
    assert [o.defaults["fused"] for o in optimizers] == [False, True]
    ids, mask = random_batch()
    for step in range(3):
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad(set_to_none=True)
            torch.manual_seed(step)
            model.loss(ids, mask, beta=1.0).loss.backward()
            optimizer.step()
    _assert_close(list(models[1].parameters()), list(models[0].parameters()))


@pytest.mark.slow
def test_a_compiled_step_equals_the_eager_step():
    model = tiny_model("della").train()
    ids, mask = random_batch()
    compiled = torch.compile(model, options={"fallback_random": True})  # as Trainer compiles
    losses, grads = [], []
    for step in (compiled, model):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        out = step(ids, mask, 1.0)
        out.loss.backward()
        losses.append(out.loss.item())
        grads.append(_grads(model))
    assert math.isclose(losses[0], losses[1], rel_tol=1e-5)
    _assert_close(grads[0], grads[1])


def _softmax_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """Attention written out: softmax(q k^T * scale + mask) v."""
    assert dropout_p == 0.0
    scores = q @ k.transpose(-2, -1) * scale
    T, K = scores.shape[-2:]
    allowed = torch.ones(T, K, dtype=torch.bool).tril(K - T) if is_causal else attn_mask
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1) @ v


@torch.no_grad()
def test_sdpa_attention_equals_a_hand_written_softmax_attention(monkeypatch):
    """The encoder pass (padding mask), the decoder pass (causal) and a cached step, fp32, 1e-5."""
    model = tiny_model("della")
    ids, mask = random_batch(b=4, t=10, pad_last=4)

    def passes():
        features = model.encode(ids, mask)
        z = model.sample_prior(4, generator=torch.Generator().manual_seed(0))
        logits, cache = model.decode(ids[:, :6], z, use_cache=True)
        step, _ = model.decode(ids[:, 6:7], z, cache=cache)
        return [features, model.token_nll(ids, mask, z), logits, step]

    fast = passes()
    monkeypatch.setattr(backbone_module.F, "scaled_dot_product_attention", _softmax_attention)
    _assert_close(fast, passes())
