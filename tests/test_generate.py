"""Decoding: the KV cache changes nothing, beam search of width 1 is greedy, filters keep what
they should, and a trained run evaluates and generates end to end."""

from __future__ import annotations

import json

import pytest
import torch

from della.config import GenerateConfig
from della.evaluate import evaluate
from della.generate import beam_search, filter_logits, generate_texts, penalize_repeats, sample_or_greedy
from della.run import load_trained
from della.train import train
from tests.conftest import tiny_model
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
    model = tiny_model("della")
    z = model.sample_prior(4, generator=torch.Generator().manual_seed(1))
    greedy = sample_or_greedy(model, z, GenerateConfig(strategy="greedy", max_new_tokens=10), None)
    assert beam_search(model, z, GenerateConfig(strategy="beam", num_beams=1, max_new_tokens=10)) == greedy


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
