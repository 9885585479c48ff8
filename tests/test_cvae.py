"""CVAEs on the GPT-2 backbone: the conditional prior, the loss mask, cached generation, the
estimators of log p(x | c), and a conditional run end to end (prepare, train, evaluate, generate)."""

from __future__ import annotations

import json

import pytest
import torch

from della.batches import collate_batch
from della.config import GenerateConfig
from della.data.conditional import Pair, encode_pairs
from della.estimators import iw_batch
from della.generate import beam_search, generate_continuations, penalize_repeats, sample_or_greedy
from della.models.base import Condition, LatentModel, gaussian_kl, gaussian_log_density
from tests.conftest import VOCAB, tiny_model

LATENT_MODELS = ["embed", "memory", "softmax", "della"]
CONDITION_MODULES = ("condition_pool", "condition_prior", "prior_condition")


class IdTokenizer:
    """Whitespace words -> ids 3.. of the tiny test vocabulary."""

    pad_id, bos_id, eos_id = VOCAB.pad_id, VOCAB.bos_id, VOCAB.eos_id

    def encode_batch(self, texts):
        return [[3 + sum(map(ord, w)) % (VOCAB.size - 3) for w in t.split()] for t in texts]


PAIRS = [Pair("a b c", "d e f g", 1), Pair("h", "i j", 2), Pair("k l m", "n", 3), Pair("o p", "q r s", 4)]


def conditional_batch():
    split = encode_pairs(PAIRS, IdTokenizer(), max_length=16, path="pairs.jsonl")
    return split, collate_batch(split, list(range(len(PAIRS))), VOCAB.pad_id)


def conditional_twin(name: str, **args) -> tuple[LatentModel, LatentModel]:
    """An unconditional model and its CVAE with the same weights, the condition's weights zeroed."""
    plain = tiny_model(name, **args)
    cvae = tiny_model(name, conditional=True, **args)
    missing, unexpected = cvae.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(key.split(".")[0] in CONDITION_MODULES for key in missing)
    with torch.no_grad():
        for key in missing:
            if key.split(".")[0] in ("condition_prior", "prior_condition"):
                cvae.get_parameter(key).zero_()
    return plain, cvae


@pytest.mark.parametrize("name,args", [(n, {}) for n in LATENT_MODELS] + [("della", {"first_prior": "learned"})])
def test_the_conditional_prior_with_zero_condition_weights_is_the_unconditional_prior(name, args):
    plain, cvae = conditional_twin(name, **args)
    _, (ids, mask, condition) = conditional_batch()
    with torch.no_grad():
        x = plain.encode(ids, mask)
        features = cvae.encode(ids, mask, condition)
        torch.testing.assert_close(cvae.split_features(features)[0], x)  # the posterior's input is unchanged
        torch.manual_seed(0)
        want = plain.sample_posterior(x, k=3)
        torch.manual_seed(0)
        got = cvae.sample_posterior(features, k=3)
        for field in ("z", "log_q", "log_p", "kl"):
            torch.testing.assert_close(getattr(got, field), getattr(want, field))
        prior = cvae.sample_prior(4, torch.Generator().manual_seed(1), condition)
        torch.testing.assert_close(prior, plain.sample_prior(4, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("name", LATENT_MODELS)
def test_the_condition_moves_the_prior_and_the_kl_is_against_it(name):
    _, cvae = conditional_twin(name)
    for key, param in cvae.named_parameters():
        if key.split(".")[0] in ("condition_prior", "prior_condition"):
            torch.nn.init.normal_(param, std=0.5, generator=torch.Generator().manual_seed(2))
    _, (ids, mask, condition) = conditional_batch()
    with torch.no_grad():
        post = cvae.sample_posterior(cvae.encode(ids, mask, condition), k=1)
        if name == "della":  # the first group: a root, p(z_1 | c_1) = N(W_c c_1)
            c = cvae.split_features(cvae.encode(ids, mask, condition))[1]
            pm, pl = (params[:, 0] for params in cvae.prior_along(post.z[0], c))
        else:
            pm, pl = cvae._prior_params(cvae.encode_condition(condition), post.mean[0])
        assert pm.abs().max() > 0.1  # the prior is no longer N(0, I)
        kl = gaussian_kl(post.mean[0][:, 0], post.logvar[0][:, 0], pm.reshape(len(PAIRS), -1)[:, :cvae.latent_size],
                         pl.reshape(len(PAIRS), -1)[:, :cvae.latent_size])
        torch.testing.assert_close(post.kl[0][:, 0], kl)
        log_p = gaussian_log_density(post.z[0][:, 0], pm.reshape(len(PAIRS), -1)[:, :cvae.latent_size],
                                     pl.reshape(len(PAIRS), -1)[:, :cvae.latent_size])
        torch.testing.assert_close(post.log_p[0][:, 0], log_p)


@pytest.mark.parametrize("name", ["gpt2", *LATENT_MODELS])
def test_only_target_tokens_and_their_eos_enter_the_loss(name):
    split, (ids, mask, condition) = conditional_batch()
    model = tiny_model(name, conditional=True)
    with torch.no_grad():
        z = model.sample_prior(len(PAIRS), torch.Generator().manual_seed(0), condition)
        nll = model.token_nll(ids, mask, z, condition)
        logp = model.decode(ids, z, condition=condition)[0].log_softmax(-1)
        out = model.loss(ids, mask, 1.0, condition)
    for b, (seq, start) in enumerate(zip(split.sequences, split.target_starts)):
        expected = -sum(logp[b, t - 1, seq[t]] for t in range(start, len(seq)))
        torch.testing.assert_close(nll[b], expected, atol=1e-5, rtol=0)
    assert out.n_tokens.tolist() == [len(p.target.split()) + 1 for p in PAIRS]  # target + </s>


def test_a_model_without_a_cvae_refuses_the_condition_and_a_cvae_needs_it():
    with pytest.raises(ValueError, match="'optimus' has no conditional"):
        tiny_model("optimus", conditional=True)
    _, (ids, mask, condition) = conditional_batch()
    with pytest.raises(ValueError, match="is conditional: pass the batch's condition"):
        tiny_model("della", conditional=True).encode(ids, mask)
    with pytest.raises(ValueError, match="is unconditional"):
        tiny_model("della").encode(ids, mask, condition)


@pytest.mark.parametrize("name", ["gpt2", "memory", "della"])
def test_cached_conditional_generation_equals_recomputing_the_prefix(name):
    split, (_, _, condition) = conditional_batch()
    model = tiny_model(name, conditional=True)
    rows = [i for i, s in enumerate(split.target_starts) if s == 4]  # prompts of one length: a b c </s>, k l m </s>
    sub = condition.rows(torch.tensor(rows))
    prompt = torch.tensor([split.sequences[i][:4] for i in rows])
    z = model.sample_prior(len(rows), torch.Generator().manual_seed(0), sub)
    cfg = GenerateConfig(strategy="greedy", max_new_tokens=6, min_new_tokens=2, repetition_penalty=1.3)
    ids = prompt
    with torch.no_grad():
        for step in range(cfg.max_new_tokens):
            logits = penalize_repeats(model.decode(ids, z, condition=sub)[0][:, -1], ids, cfg.repetition_penalty)
            if step < cfg.min_new_tokens:
                logits[:, VOCAB.eos_id] = float("-inf")
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    naive = [r[: r.index(VOCAB.eos_id)] if VOCAB.eos_id in r else r for r in ids[:, 4:].tolist()]
    assert sample_or_greedy(model, z, cfg, None, prompt, sub) == naive
    # the beams' caches and conditions reorder; without a repetition penalty (beam search takes it on the
    # log-probabilities, as HF's does) one beam is greedy
    plain = GenerateConfig(**{**vars(cfg), "repetition_penalty": 1.0})
    one_beam = GenerateConfig(**{**vars(plain), "strategy": "beam", "num_beams": 1})
    assert beam_search(model, z, one_beam, prompt, sub) == sample_or_greedy(model, z, plain, None, prompt, sub)


def test_continuations_are_one_per_pair_in_order_and_exclude_the_prompt():
    """The plain GPT-2 CVAE decodes greedily without a latent, so each pair's continuation is fixed:
    batching by prompt length must neither reorder nor mix them."""
    split, (_, _, condition) = conditional_batch()
    model = tiny_model("gpt2", conditional=True)

    class Ids:
        def decode_batch(self, rows):
            return [" ".join(map(str, r)) for r in rows]

    cfg = GenerateConfig(strategy="greedy", max_new_tokens=5, min_new_tokens=5, batch_size=3)
    texts = generate_continuations(model, Ids(), split, cfg, seed=0)
    alone = []
    for i, (seq, start) in enumerate(zip(split.sequences, split.target_starts)):
        z = torch.zeros(1, 0, 0)
        row = sample_or_greedy(model, z, cfg, None, torch.tensor([seq[:start]]), condition.rows(torch.tensor([i])))
        alone.append(" ".join(map(str, row[0])))
    assert texts == alone and len(texts) == len(PAIRS)
    assert texts == generate_continuations(model, Ids(), split, GenerateConfig(**{**vars(cfg), "batch_size": 1}), 0)


def test_iw_of_log_p_x_given_c_is_exact_when_the_decoder_ignores_z():
    """With no latent injected, p(x | z, c) = p(x | c) for every z, so log p(x | c) is the decoder's
    own log-likelihood, and the IW estimate must converge to it (the weights p(z|c)/q(z|x,c) average to 1)."""
    model = tiny_model("embed", conditional=True)
    with torch.no_grad():
        model.latent_to_embedding.weight.zero_()
        model.to_posterior.weight.mul_(0.1)  # q near p: the IW weights' variance is small
        model.condition_prior.weight.mul_(0.2)
    _, (ids, mask, condition) = conditional_batch()
    with torch.no_grad():
        exact = -model.token_nll(ids, mask, torch.zeros(len(PAIRS), 1, model.latent_size), condition)
        torch.manual_seed(0)
        est = iw_batch(model, ids, mask, k=1000, condition=condition)
    assert est.kl.sum(-1).min() > 1e-3  # q and p(z | c) differ, so the weights are not all 1
    torch.testing.assert_close(est.log_marginal, exact, atol=0.01, rtol=0)
    assert (est.log_marginal >= -(est.rec_nll + est.kl.sum(-1)) - 1e-4).all()  # IW bound above the ELBO


def test_plain_gpt2_cvae_log_p_x_given_c_is_its_exact_target_likelihood():
    model = tiny_model("gpt2", conditional=True)
    split, (ids, mask, condition) = conditional_batch()
    with torch.no_grad():
        est = iw_batch(model, ids, mask, k=5, condition=condition)
        logp = model.decode(ids, torch.zeros(len(PAIRS), 0, 0), condition=condition)[0].log_softmax(-1)
    for b, (seq, start) in enumerate(zip(split.sequences, split.target_starts)):
        expected = sum(logp[b, t - 1, seq[t]] for t in range(start, len(seq)))
        torch.testing.assert_close(est.log_marginal[b], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "della"])
def test_a_conditional_run_trains_evaluates_and_generates(tmp_path, name):
    """prepare-data (synthetic-conditional) -> BPE -> train -> evaluate -> generate, by the CLI."""
    from della.cli import main
    from della.data.conditional import read_pairs
    from della.data.tokenizer import BOS, EOS, PAD, Tokenizer, train_bpe

    data, tok, run = tmp_path / "data", tmp_path / "tok", tmp_path / "run"
    main(["prepare-data", "--source", "synthetic-conditional", "--out", str(data), "--max-train-lines", "64",
          "--max-eval-lines", "8"])
    pairs = read_pairs(data / "train.jsonl")
    texts = [t for p in pairs for t in (p.source, p.target)]
    Tokenizer(train_bpe(texts, 300), {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}).save(tok)
    config = {"dataset": "cond", "data_dir": str(data), "tokenizer_dir": str(tok), "model": name, "seed": 1,
              "task": "conditional", "backbone": {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64},
              "train": {"epochs": 1, "batch_size": 16, "max_length": 64},
              "evaluate": {"iw_samples": 3}, "generate": {"strategy": "greedy", "max_new_tokens": 8}}
    run.mkdir()
    (run / "config.yaml").write_text(json.dumps(config))
    main(["train", "--config", str(run / "config.yaml"), "--out", str(run)])
    main(["evaluate", "--run", str(run), "--out", str(run / "eval.json")])
    main(["generate", "--run", str(run), "--out", str(run / "samples.txt")])
    metrics = json.loads((run / "eval.json").read_text())["metrics"]
    assert metrics["iw_ppl"]["value"] > 1 and json.loads((run / "eval.json").read_text())["data"]["conditional"]
    if name == "della":
        assert metrics["kl"]["value"] > 0 and metrics["au"]["value"] is not None
    samples = (run / "samples.txt").read_text().splitlines()
    assert len(samples) == len(read_pairs(data / "test.jsonl")) == 8
    record = json.loads((run / "samples.json").read_text())
    assert record["n"] == 8 and "continuation only" in record["conditional"]["output"]
    sources = {p.source for p in read_pairs(data / "test.jsonl")}
    assert not any(s and s in sources for s in samples)  # the prompt is not part of the output


@torch.no_grad()
def test_beam_search_of_a_gpt2_cvae_equals_transformers_generate():
    """The plain GPT-2 CVAE, peaky, three prompts (source + </s>) at once: our beam search gives HF
    generate's continuations with the official code's settings (length penalty 1, no early stopping)."""
    from tests.conftest import hf_gpt2

    eos = VOCAB.eos_id
    for seed in range(3):
        model = tiny_model("gpt2", seed=seed, conditional=True)
        model.backbone.gpt2.wte.weight.mul_(8.0)
        model.backbone.gpt2.wte.weight[eos] *= 1.4
        source = torch.randint(3, VOCAB.size, (3, 5), generator=torch.Generator().manual_seed(seed))
        prompt = torch.cat([source, torch.full((3, 1), eos)], 1)
        condition = Condition(prompt, torch.ones_like(prompt, dtype=torch.float), torch.full((3,), 6))
        cfg = GenerateConfig(strategy="beam", num_beams=3, max_new_tokens=10, min_new_tokens=3, repetition_penalty=1.2)
        ours = beam_search(model, torch.zeros(3, 0, 0), cfg, prompt, condition)
        out = hf_gpt2(model.backbone, head=True).generate(
            prompt, attention_mask=torch.ones_like(prompt), num_beams=3, early_stopping=False, length_penalty=1.0,
            max_new_tokens=10, min_new_tokens=3, repetition_penalty=1.2, do_sample=False, eos_token_id=eos,
            pad_token_id=VOCAB.pad_id)
        expected = [r[: r.index(eos)] if eos in r else [t for t in r if t != VOCAB.pad_id] for r in out[:, 6:].tolist()]
        assert ours == expected, seed


@torch.no_grad()
def test_della_encodes_the_condition_with_the_posteriors_own_encoder_and_pooling():
    """Reference §5: c_l is the official encoder's pass over the source, pooling weights included, so
    under `pool: attention` it is x^(l) of the source (the unconditional model's encoding of it)."""
    plain, cvae = conditional_twin("della", pool="attention")
    for pool in plain.pool:
        pool.w.normal_()  # pooling weights far from their init, so a second set would differ
    cvae.pool.load_state_dict(plain.pool.state_dict())
    _, (_, _, condition) = conditional_batch()
    torch.testing.assert_close(cvae.encode_condition(condition), plain.encode(condition.ids, condition.mask))
