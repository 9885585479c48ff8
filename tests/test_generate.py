"""Decoding: the KV cache changes nothing, beam search of width 1 is greedy, filters keep what
they should, and a trained run evaluates and generates end to end."""

from __future__ import annotations

import json

import pytest
import torch

from della.config import GenerateConfig
from della.evaluate import evaluate
from della.generate import (beam_search, decode_rows, filter_logits, generate_texts, penalize_repeats,
                            sample_or_greedy)
from della.run import load_trained
from della.train import train
from tests.conftest import hf_gpt2, tiny_model
from tests.test_train import run_config


def naive_greedy(model, z, cfg: GenerateConfig):
    """Greedy decoding that recomputes the whole prefix at every step (no cache)."""
    ids = torch.full((z.shape[0], 1), model.vocab.bos_id)
    for step in range(cfg.max_new_tokens):
        logits, _ = model.decode(ids, z)
        logits = penalize_repeats(logits[:, -1], ids, cfg.repetition_penalty)
        if step < cfg.min_new_tokens:
            logits[:, model.vocab.eos_id] = float("-inf")
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    rows = ids[:, 1:].tolist()
    return [r[: r.index(model.vocab.eos_id)] if model.vocab.eos_id in r else r for r in rows]


@pytest.mark.parametrize("name", ["gpt2", "memory", "della"])
def test_cached_greedy_generation_equals_recomputing_the_prefix(name):
    model = tiny_model(name)
    cfg = GenerateConfig(strategy="greedy", max_new_tokens=12, repetition_penalty=1.2)
    z = model.sample_prior(5, generator=torch.Generator().manual_seed(0))
    assert sample_or_greedy(model, z, cfg, None) == naive_greedy(model, z, cfg)


def test_beam_search_of_width_one_is_greedy():
    """As in HF generate: one beam decodes greedily (the repetition penalty on the logits)."""
    model = tiny_model("della")
    z = model.sample_prior(4, generator=torch.Generator().manual_seed(1))
    greedy = sample_or_greedy(model, z, GenerateConfig(strategy="greedy", max_new_tokens=10, repetition_penalty=1.2), None)
    one_beam = GenerateConfig(strategy="beam", num_beams=1, max_new_tokens=10, repetition_penalty=1.2)
    assert decode_rows(model, z, one_beam, None, None, None) == greedy


def _peaky_lm(seed: int, eos_boost: float):
    """A tiny GPT-2 LM with peaky next-token distributions (scaled embeddings), </s> made likelier."""
    model = tiny_model("gpt2", seed=seed)
    with torch.no_grad():
        model.backbone.gpt2.wte.weight.mul_(8.0)
        model.backbone.gpt2.wte.weight[model.vocab.eos_id] *= eos_boost
    return model


@pytest.mark.parametrize("num_beams, penalty", [(3, 1.0), (3, 1.2), (5, 1.2)])
def test_beam_search_equals_transformers_generate(num_beams, penalty):
    """HF generate's beam search as the official code ran it (length penalty 1, no early stopping;
    the repetition penalty and min_new_tokens on the log-probabilities): the same text from 8 peaky
    LMs, where hypotheses ending in </s> compete with beams cut at the length limit."""
    for seed in range(4):
        for boost in (1.0, 1.5):
            model = _peaky_lm(seed, boost)
            vocab = model.vocab
            cfg = GenerateConfig(strategy="beam", num_beams=num_beams, max_new_tokens=12, min_new_tokens=3,
                                 repetition_penalty=penalty)
            ours = beam_search(model, model.sample_prior(1), cfg)
            bos = torch.full((1, 1), vocab.bos_id)
            out = hf_gpt2(model.backbone, head=True).generate(
                bos, attention_mask=torch.ones_like(bos), do_sample=False, num_beams=num_beams, early_stopping=False,
                length_penalty=1.0, max_new_tokens=12, min_new_tokens=3, repetition_penalty=penalty,
                eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id, bos_token_id=vocab.bos_id)
            row = out[0, 1:].tolist()
            assert ours == [row[: row.index(vocab.eos_id)] if vocab.eos_id in row else row], (seed, boost)


def test_beam_search_finds_a_sequence_at_least_as_likely_as_greedy():
    model = tiny_model("embed", seed=3)
    z = model.sample_prior(3, generator=torch.Generator().manual_seed(2))

    def score(rows):
        ids = torch.tensor([[model.vocab.bos_id, *r] for r in rows])
        logp = model.decode(ids, z)[0].log_softmax(-1)[:, :-1].gather(2, ids[:, 1:, None])
        return logp.sum((1, 2))

    greedy = sample_or_greedy(model, z, GenerateConfig(strategy="greedy", max_new_tokens=6, min_new_tokens=6), None)
    beams = beam_search(model, z, GenerateConfig(strategy="beam", num_beams=4, max_new_tokens=6, min_new_tokens=6))
    assert all(len(r) == 6 for r in beams)
    assert (score(beams) >= score(greedy) - 1e-5).all()


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2, top_p=1.0)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_k=0, top_p=0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_k=0, top_p=0.81)).tolist() == [[False, False, False, True]]


def test_sampling_is_reproducible_from_the_seed():
    model = tiny_model("della")

    class Chars:  # a stand-in tokenizer: ids -> letters
        def decode_batch(self, rows):
            return [" ".join(chr(97 + i % 26) for i in r) for r in rows]

    cfg = GenerateConfig(n_samples=6, batch_size=4, top_k=10, max_new_tokens=8)
    assert generate_texts(model, Chars(), cfg, seed=7) == generate_texts(model, Chars(), cfg, seed=7)
    assert generate_texts(model, Chars(), cfg, seed=7) != generate_texts(model, Chars(), cfg, seed=8)


@pytest.mark.parametrize("name", ["gpt2", "della"])
def test_a_trained_run_evaluates_with_every_metric_and_its_recipe(corpus, tmp_path, name):
    train(run_config(corpus, model=name, epochs=1), tmp_path / "run")
    result = evaluate(tmp_path / "run", "test", tmp_path / "eval.json")
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert result["metrics"] == metrics
    assert metrics["iw_ppl"]["value"] > 1 and metrics["iw_ppl"]["higher_is_better"] is False
    assert "K=4" in metrics["iw_ppl"]["signature"]
    if name == "gpt2":
        assert metrics["kl"]["value"] is None and "no latent" in metrics["kl"]["error"]
        assert metrics["iw_ppl"]["details"]["estimator"] == "exact"
    else:
        assert metrics["kl"]["value"] >= 0 and len(metrics["kl"]["details"]["per_group"]) == 2
        assert {"mi", "au", "au_001", "iw_ppl_official", "probe_topic"} <= set(metrics)
        # -ELBO upper-bounds the IW NLL on average (K >= 1 tightens the bound)
        assert metrics["neg_elbo"]["value"] >= metrics["iw_nll"]["value"] - 0.5
    _, model, tokenizer, _ = load_trained(tmp_path / "run")
    texts = generate_texts(model, tokenizer, GenerateConfig(n_samples=3, strategy="beam", num_beams=3,
                                                            max_new_tokens=8), seed=0)
    assert len(texts) == 3 and all("\n" not in t for t in texts)


def test_decoding_flags_override_the_run_config_and_are_recorded(corpus, tmp_path):
    from della.cli import main as della_cli

    train(run_config(corpus, model="embed", epochs=1), tmp_path / "run")
    run_settings = load_trained(tmp_path / "run")[0].generate

    def generate(name, *flags):
        della_cli(["generate", "--run", str(tmp_path / "run"), "--out", str(tmp_path / f"{name}.txt"), *flags])
        return (tmp_path / f"{name}.txt").read_text().splitlines(), json.loads((tmp_path / f"{name}.json").read_text())

    texts, doc = generate("greedy", "--strategy", "greedy", "--n-samples", "5", "--max-new-tokens", "7",
                          "--repetition-penalty", "1.3", "--seed", "11")
    assert len(texts) == 5 and doc["n"] == 5 and doc["seed"] == 11
    settings = doc["settings"]
    assert (settings["strategy"], settings["n_samples"], settings["max_new_tokens"],
            settings["repetition_penalty"]) == ("greedy", 5, 7, 1.3)
    assert settings["top_p"] == run_settings.top_p and settings["min_new_tokens"] == run_settings.min_new_tokens
    assert all(len(t.split()) <= 7 for t in texts)

    sampled = [generate(f"s{seed}", "--n-samples", "6", "--top-k", "5", "--temperature", "1.5",
                        "--seed", str(seed))[0] for seed in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]
    _, doc = generate("default")
    assert doc["settings"] == {**run_settings.__dict__} and doc["seed"] == 3  # no flag: the run config
