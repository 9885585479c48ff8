"""della.flops (the one FLOP count of the benchmark and the cost table) and the MFU cost entry."""

from __future__ import annotations

import pytest
import torch

from della import cost
from della.flops import (cvae_floor, forward_flops, forward_flops_per_token, peak_tflops, train_flops_per_sequence,
                         vae_lm_floor)
from tests.conftest import tiny_model


def test_the_body_count_is_two_flops_per_matmul_weight_of_the_blocks():
    """At seq -> 0 a block's forward is 2 FLOPs per weight of its four matmuls (6N rule's 2N)."""
    model = tiny_model("gpt2")
    gpt2 = model.backbone.gpt2
    weights = sum(m.weight.numel() for block in gpt2.h
                  for m in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj))
    cfg = gpt2.config
    body, head = forward_flops_per_token(cfg.n_layer, cfg.n_embd, cfg.vocab_size, seq=0)
    assert body == 2 * weights
    assert head == 2 * gpt2.wte.weight.numel()


def test_gpt2_small_training_flops_and_the_vae_floor():
    """128 tokens: the decoder runs over the 127 that predict one, the encoder over all 128."""
    decoder = 127 * (12 * (24 * 768**2 + 4 * 127 * 768) + 2 * 768 * 50257)
    encoder = 128 * 12 * (24 * 768**2 + 4 * 128 * 768)
    assert train_flops_per_sequence(12, 768, 50257, 128, encoder=False) == 3 * decoder
    assert train_flops_per_sequence(12, 768, 50257, 128, encoder=True) == 3 * (decoder + encoder)
    assert vae_lm_floor(12, 768, 50257, 128) == pytest.approx(1 + encoder / decoder)


def test_peaks_come_from_the_table_by_card_name_or_say_why_not():
    assert peak_tflops("NVIDIA H200", "bf16") == (989.0, "")
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "fp32") == (19.5, "")
    peak, why = peak_tflops("Tesla T4", "bf16")
    assert peak is None and "PEAK_TFLOPS" in why
    assert peak_tflops(None, "fp32")[0] is None
    for lower in ("NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200 NVL"):  # not the SXM card's peak
        peak, why = peak_tflops(lower, "bf16")
        assert peak is None and "another peak" in why
    assert peak_tflops("NVIDIA A100-PCIE-40GB", "bf16") == (312.0, "")  # the same peak as the SXM card


def _run_doc(**cost_fields) -> dict:
    return {"kind": "run", "parameters": 10, "provenance": {"device": {"type": "cpu"}},
            "cost": {"train_seconds": 1.0, "tokens_per_second": 5.0, "max_rss_mb": 1.0, **cost_fields}}


def test_the_cost_entries_carry_mfu_or_the_reason_it_is_null():
    speed = {"precision": "bf16", "matmul": "bf16"}
    on_gpu = cost.run_metrics({**_run_doc(mfu=0.4, peak_tflops=989.0), "speed": speed})
    assert on_gpu["mfu"]["value"] == 0.4
    assert on_gpu["mfu"]["signature"].endswith("|precision=bf16|matmul=bf16|peak=989.0 TFLOP/s")
    on_cpu = cost.run_metrics(_run_doc(mfu=None, mfu_note="not trained on a GPU: no peak FLOP rate"))
    assert on_cpu["mfu"]["value"] is None and "not trained on a GPU" in on_cpu["mfu"]["error"]
    assert cost.run_metrics(_run_doc())["mfu"]["error"] == "run.json has no cost.mfu"


def test_cvae_floor_counts_the_extra_encoder_passes_by_hand():
    """L = 1, d = 1, V = 1, source 2, target 3: every term small enough to add up by hand."""
    # gpt2: plain over 4 of the 5 tokens 4 * (24 + 4*4 + 2) = 168; posterior 5 * (24 + 20) = 220;
    # condition 2 * (24 + 8) = 64
    assert cvae_floor("gpt2", 1, 1, 1, 2, 3) == pytest.approx((168 + 220 + 64) / 168)
    # bart: encoder 2 * (24 + 8) = 64; decoder over 2 of the 3 target tokens 2 * (28 + 8 + 8) + 2 * 4 = 96;
    # head 2 * 2 = 4; posterior 220
    assert cvae_floor("bart", 1, 1, 1, 2, 3) == pytest.approx((64 + 96 + 4 + 220) / (64 + 96 + 4))
    with pytest.raises(ValueError, match="expected gpt2 or bart"):
        cvae_floor("t5", 1, 1, 1, 2, 3)


def test_forward_flops_of_a_sentence_and_of_a_cvae_example_by_hand():
    """L = 1, d = 2, V = 3: body(T) = 24*4 + 8T per token, head 12."""
    # gpt2 CVAE, sequence 4 of which source 2: decoder 3 * (96 + 24 + 12) = 396; posterior 4 * (96 + 32) = 512;
    # condition 2 * (96 + 16) = 224
    assert forward_flops("gpt2", 1, 2, 3, 4, 2, latent=False) == 396
    assert forward_flops("gpt2", 1, 2, 3, 4, 2, latent=True) == 396 + 512 + 224
    assert forward_flops("gpt2", 1, 2, 3, 4, latent=True) == 396 + 512  # a sentence: no condition
    # bart, decoder sequence 4, source 2: encoder 224; decoder 3 * (112 + 24 + 16) + 2 * 16 = 488; head 3 * 12;
    # posterior over 6 tokens 6 * (96 + 48) = 864
    assert forward_flops("bart", 1, 2, 3, 4, 2, latent=False) == 224 + 488 + 36
    assert forward_flops("bart", 1, 2, 3, 4, 2, latent=True) == 224 + 488 + 36 + 864


@pytest.mark.parametrize("kind", ["gpt2", "bart"])
def test_a_cvae_runs_mfu_counts_its_whole_example_per_predicted_target_token(kind):
    """The MFU's FLOPs per token: the example's (source and target, every pass) over the target tokens
    the loss predicts (tokens/s counts those), not a sentence's count over the whole sequence."""
    from types import SimpleNamespace

    from della.batches import EncodedSplit
    from della.config import TrainConfig
    from della.train import utilisation

    split = EncodedSplit("x", [[0] * 10, [0] * 14], sources=[[0] * 5, [0] * 7], target_starts=[6, 8])
    model = SimpleNamespace(backbone=SimpleNamespace(n_layer=2, n_embd=8), vocab=SimpleNamespace(size=50), n_groups=3)
    trainer = SimpleNamespace(train_split=split, model=model, device=torch.device("cpu"),
                              cfg=SimpleNamespace(backbone=SimpleNamespace(kind=kind), train=TrainConfig()),
                              dist=SimpleNamespace(world=1))
    out = utilisation(trainer, tokens_per_second=100.0)
    # mean sequence 12, mean source 6, mean predicted tokens (10 - 6 + 14 - 8) / 2 = 5
    assert out["flops_per_token"] == pytest.approx(3 * forward_flops(kind, 2, 8, 50, 12, 6, latent=True) / 5)
    assert out["mfu"] is None and out["peak_tflops"] is None  # on a CPU
