"""Fig 3 (`python -m della interpolate`) with tiny untrained models saved as run directories."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from della.batches import collate
from della.cli import main as della_cli
from della.config import GenerateConfig, RunConfig
from della.data.tokenizer import load_tokenizer
from della.generate import sample_or_greedy
from della.interpolate import (interpolate, interpolate_latents, interpolation_weights, mean_path,
                              sentence_means, zero_noise)
from della.models.base import Vocab, build_model, gaussian_log_density
from tests.conftest import TINY, random_batch, tiny_model

A, B = "the cat sat on the mat", "a dog ran in the park"
GREEDY = GenerateConfig(strategy="greedy", max_new_tokens=8, min_new_tokens=2)


def trained_like_run(tmp_path, corpus, name):
    """An untrained tiny model saved as a finished run on the corpus's tokenizer."""
    tok = load_tokenizer(corpus / "tok")
    torch.manual_seed(0)
    model = build_model(name, {}, Vocab(tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id), backbone_config=TINY)
    run = tmp_path / name
    model.save_pretrained(run / "model")
    cfg = RunConfig(dataset="synthetic", data_dir=str(corpus / "data"), tokenizer_dir=str(corpus / "tok"),
                    model=name, backbone=TINY, generate=GREEDY)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    return run, model.eval(), tok


def test_weights_run_from_a_to_b_with_both_endpoints():
    assert interpolation_weights(5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="--steps = 1: need at least 2"):
        interpolation_weights(1)


def test_latents_are_linear_in_t_for_every_group():
    z_a, z_b = torch.zeros(3, 4), torch.ones(3, 4) * 2
    z = interpolate_latents(z_a, z_b, [0.0, 0.25, 1.0])
    assert torch.equal(z[0], z_a) and torch.equal(z[2], z_b)
    assert torch.allclose(z[1], torch.full((3, 4), 0.5))


def test_single_latent_mean_path_is_the_posterior_mean():
    model = tiny_model("embed")
    ids, mask = random_batch()
    expected, _ = model.to_posterior(model.encode(ids, mask)).chunk(2, dim=-1)
    assert torch.allclose(mean_path(model, ids, mask), expected, atol=1e-6)


def test_della_mean_path_puts_every_layer_at_its_mean_given_the_layers_below():
    """log_q_matrix recomputes each μ_l(x, z_<l) from the path alone; log q(z | x) then equals
    -½ Σ (log 2π + log σ²) only if every quadratic term (z_l - μ_l)² / σ_l² is zero."""
    model = tiny_model("della")
    ids, mask = random_batch()
    features = model.encode(ids, mask)
    z = mean_path(model, ids, mask)
    with zero_noise():
        logvar = model.sample_posterior(features, k=1).logvar[0]  # σ² on the same path
    at_mean = gaussian_log_density(z, z, logvar).sum(-1)
    assert torch.allclose(torch.diagonal(model.log_q_matrix(z, features)), at_mean, atol=1e-4)


def test_model_without_latent_is_a_clear_error():
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match="'gpt2' has no latent"):
        mean_path(model, *random_batch())


@pytest.mark.parametrize("name", ["embed", "della"])
def test_endpoints_decode_the_posterior_means_of_a_and_b(tmp_path, corpus, name):
    _, model, tok = trained_like_run(tmp_path, corpus, name)
    weights, texts = interpolate(model, tok, A, B, steps=6, max_length=32, generate=GREEDY)
    assert len(weights) == len(texts) == 6
    ids, mask = collate([[tok.bos_id, *tok.encode(s), tok.eos_id] for s in (A, B)], tok.pad_id)
    ends = sample_or_greedy(model, mean_path(model, ids, mask), GREEDY, None)
    assert texts[0] == " ".join(tok.decode(ends[0]).split())
    assert texts[-1] == " ".join(tok.decode(ends[1]).split())


def test_an_endpoint_does_not_depend_on_the_other_sentence_under_pad_reading_pooling():
    """The official DELLA pools over pads: encoded together, a short sentence's mean would move with
    the other's length; each is encoded alone."""
    model = tiny_model("della", pool="attention", pool_mask=False)
    short, long_ = [1, 5, 6, 2], [1, *range(5, 20), 2]
    alone, = sentence_means(model, [short])
    beside_long = sentence_means(model, [short, long_])[0]
    assert torch.equal(alone, beside_long)
    joint = mean_path(model, *collate([short, long_], model.vocab.pad_id))[0]
    assert not torch.allclose(joint, alone, atol=1e-4)  # what a shared batch would have drawn


def test_decoding_is_greedy_whatever_the_run_strategy(tmp_path, corpus):
    _, model, tok = trained_like_run(tmp_path, corpus, "embed")
    sampled = dataclasses.replace(GREEDY, strategy="sample", top_p=0.5)
    assert interpolate(model, tok, A, B, 4, 32, sampled) == interpolate(model, tok, A, B, 4, 32, GREEDY)


def test_cli_writes_markdown_and_html_with_one_row_per_step(tmp_path, corpus):
    run, _, _ = trained_like_run(tmp_path, corpus, "della")
    out = tmp_path / "fig3" / "interp.md"
    della_cli(["interpolate", "--run", str(run), "--a", A, "--b", B, "--steps", "7", "--out", str(out)])
    lines = out.read_text().splitlines()
    assert lines[2] == f"| a | *{A}* |" and lines[10] == f"| b | *{B}* |"
    assert [line.split(" | ")[0] for line in lines[3:10]] == [f"| {i / 6:.2f}" for i in range(7)]
    page = out.with_suffix(".html").read_text()
    assert page.count("<tr>") == 1 + 7 + 2 and B in page


def test_a_model_that_draws_noise_another_way_is_refused():
    model = tiny_model("embed")
    sample = model.sample_posterior

    def other_noise(features, k):
        post = sample(features, k)
        post.z = post.z + torch.rand_like(post.z)
        return post

    model.sample_posterior = other_noise
    with pytest.raises(RuntimeError, match="zero-noise posterior sample is not its mean"):
        mean_path(model, *random_batch())
