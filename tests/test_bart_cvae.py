"""The BART models (della/models/bart.py): the plain BART equals Hugging Face's, each paradigm with
its injection switched off is the plain BART, the conditional prior reduces to the unconditional
one, only target tokens are scored, cached decoding is exact, checkpoints round-trip, and the
shared estimators run on a BART CVAE."""

from __future__ import annotations

import json

import pytest
import torch

from della.config import BackboneConfig
from della.estimators import iw_batch
from della.models import MODELS, runs_on
from della.models.base import Condition, LatentModel, build_model
from tests.conftest import VOCAB, hf_bart, random_batch, tiny_model

BART = BackboneConfig(kind="bart", n_layer=3, n_embd=32, n_head=2, n_positions=32, dropout=0.0)
PARADIGMS = ["embed", "memory", "softmax", "della"]
BART_MODELS = ["bart", *PARADIGMS]
BOS, EOS, PAD = VOCAB.bos_id, VOCAB.eos_id, VOCAB.pad_id


def bart_model(name: str, seed: int = 0, **model_args) -> LatentModel:
    torch.manual_seed(seed)
    return build_model(name, model_args, VOCAB, backbone_config=BART, conditional=True).eval()


def pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([row + [PAD] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1.0] * len(row) + [0.0] * (width - len(row)) for row in rows])  # float, as collate's
    return ids, mask


def bart_batch(seed: int = 0, source_lengths=(7, 4, 2), target_lengths=(5, 3, 6)):
    """The BART layout: decoder </s> <s> target </s>, condition <s> source </s>, target_start 2."""
    g = torch.Generator().manual_seed(seed)

    def words(n: int) -> list[int]:
        return torch.randint(3, VOCAB.size, (n,), generator=g).tolist()

    ids, mask = pad([[EOS, BOS, *words(n), EOS] for n in target_lengths])
    source, source_mask = pad([[BOS, *words(n), EOS] for n in source_lengths])
    return ids, mask, Condition(source, source_mask, torch.full((len(target_lengths),), 2))


def share_backbone(model: LatentModel, like: LatentModel) -> LatentModel:
    model.backbone.load_state_dict(like.backbone.state_dict())
    return model


# --- the plain BART ----------------------------------------------------------------------------
@torch.no_grad()
def test_plain_bart_logits_equal_hf_bart_for_conditional_generation():
    model = bart_model("bart")
    model.backbone.final_logits_bias.normal_()  # zeros in the checkpoints; random so the test sees it
    hf = hf_bart(model.backbone)
    ids, mask, cond = bart_batch()
    logits, _ = model.decode(ids, model.sample_prior(3, condition=cond), condition=cond)
    expected = hf(input_ids=cond.ids, attention_mask=cond.mask, decoder_input_ids=ids,
                  decoder_attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(logits[real], expected[real], atol=1e-5, rtol=0)


@torch.no_grad()
def test_untied_head_replaces_the_shared_embedding_and_keeps_the_logits_bias():
    model = bart_model("bart", tie_lm_head=False)
    model.backbone.final_logits_bias.normal_()
    model.lm_head.weight.zero_()
    ids, _, cond = bart_batch()
    logits, _ = model.decode(ids, model.sample_prior(3, condition=cond), condition=cond)
    torch.testing.assert_close(logits, model.backbone.final_logits_bias.expand_as(logits), atol=0, rtol=0)


def test_registry_names_bart_and_each_model_builds_only_on_its_backbones():
    spec = MODELS.get("bart")
    assert (spec.paper_name, spec.has_latent) == ("Bart-base", False)
    assert all(runs_on(name, "bart") and runs_on(name, "gpt2") for name in PARADIGMS)
    assert not runs_on("bart", "gpt2") and not runs_on("gpt2", "bart") and not runs_on("optimus", "bart")
    with pytest.raises(ValueError, match="'bart' runs on BART only: it needs backbone.kind = bart"):
        tiny_model("bart", conditional=True)
    with pytest.raises(ValueError, match="'optimus' has no version on backbone.kind = bart; models with one: "
                                         r"\['bart', 'della', 'embed', 'memory', 'softmax'\]"):
        bart_model("optimus")
    with pytest.raises(ValueError, match="'della' on backbone.kind = bart is an encoder-decoder: it needs a cond"):
        build_model("della", {}, VOCAB, backbone_config=BART)
    with pytest.raises(ValueError, match="unknown key.*latent_dim.*valid keys"):  # the GPT-2 model's config class
        bart_model("della", latent_dim=8)
    assert type(bart_model("della").config) is type(tiny_model("della").config)


# --- latent-free parity: each paradigm with its injection off is the plain BART ------------------
def switch_off(model: LatentModel) -> None:
    """Zero the z -> decoder maps; DELLA's fusion becomes V' = V (text map I, latent factor 1)."""
    with torch.no_grad():
        for name in ("latent_to_embedding", "latent_to_hidden"):
            if hasattr(model, name):
                getattr(model, name).weight.zero_()
        fusion = getattr(model, "fusion", None)
        if fusion is not None:
            for p in fusion.parameters():
                p.zero_()
            if hasattr(fusion, "text_weight"):  # LMF: at every layer rank 0 carries [I | 0] and the factor 1
                d = fusion.text_weight.shape[2]
                fusion.text_weight[:, 0, :, :d] = torch.eye(d)
                fusion.latent_bias[:, 0] = 1.0


@pytest.mark.parametrize("name, args", [("embed", {}), ("softmax", {}), ("della", {}),
                                        ("della", {"lmf_mode": "lowrank"}), ("della", {"fusion": "add"}),
                                        ("della", {"shared_latent": True, "begin_layer": 1})])
@torch.no_grad()
def test_paradigm_with_its_injection_switched_off_gives_the_plain_bart_nll(name, args):
    """Memory has no such switch: a zero slot still takes attention mass (its score is 0, not -inf)."""
    plain = bart_model("bart")
    model = share_backbone(bart_model(name, seed=1, **args), plain)
    ids, mask, cond = bart_batch(seed=1)
    z = model.sample_prior(3, condition=cond) + 1.0  # far from 0: a leak of z would show
    expected = plain.token_nll(ids, mask, plain.sample_prior(3, condition=cond), cond)
    before = model.token_nll(ids, mask, z, cond)
    switch_off(model)
    assert not torch.allclose(before, expected, atol=1e-4)  # the injection did act before
    torch.testing.assert_close(model.token_nll(ids, mask, z, cond), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", PARADIGMS)
@torch.no_grad()
def test_every_bart_paradigm_uses_z(name):
    model = bart_model(name)
    ids, _, cond = bart_batch(seed=9)
    a, _ = model.decode(ids, model.sample_prior(3, condition=cond), condition=cond)
    b, _ = model.decode(ids, model.sample_prior(3, condition=cond), condition=cond)
    assert not torch.allclose(a, b)


@torch.no_grad()
def test_della_z_l_reaches_decoder_layer_l_and_no_layer_below():
    model = bart_model("della")
    ids, _, cond = bart_batch(seed=10)
    encoder = model.backbone.encode(cond.ids, cond.mask).hidden
    z = model.sample_prior(3, condition=cond)
    moved = z.clone()
    moved[:, 1] += 1.0
    base, changed = (model.backbone.decode(ids, encoder, cond.mask, inject=model.decoder_injection(zz),
                                           return_layers=True).layers for zz in (z, moved))
    torch.testing.assert_close(changed[0], base[0], atol=0, rtol=0)
    assert not torch.allclose(changed[1], base[1]) and not torch.allclose(changed[2], base[2])


# --- the conditional prior ------------------------------------------------------------------------
def zero_condition_weights(model: LatentModel) -> None:
    with torch.no_grad():
        layers = model.prior_condition if hasattr(model, "prior_condition") else [model.condition_prior]
        for layer in layers:
            layer.weight.zero_()


def unconditional_twin(model: LatentModel, name: str, **args) -> LatentModel:
    """An unconditional GPT-2 model with the BART model's latent heads (the condition's aside)."""
    twin = tiny_model(name, **args)
    heads = {k: v for k, v in model.state_dict().items()
             if not k.startswith(("backbone.", "condition_pool", "prior_condition", "condition_prior"))}
    missing, unexpected = twin.load_state_dict(heads, strict=False)
    assert not unexpected and all(k.startswith("backbone.") for k in missing)
    return twin


@pytest.mark.parametrize("name, args", [("embed", {}), ("softmax", {}), ("della", {}),
                                        ("della", {"first_prior": "learned"})])
@torch.no_grad()
def test_conditional_prior_with_zeroed_condition_weights_is_the_unconditional_prior(name, args):
    model = bart_model(name, **args)
    ids, mask, cond = bart_batch(seed=2)
    features = model.encode(ids, mask, cond)
    assert features.shape[-1] == 2 * BART.n_embd  # [x; c]
    def conditional():
        return model.sample_prior(3, torch.Generator().manual_seed(5), cond)

    before = conditional()
    zero_condition_weights(model)
    twin = unconditional_twin(model, name, **args)
    unconditional = twin.sample_prior(3, torch.Generator().manual_seed(5))
    assert not torch.allclose(before, unconditional, atol=1e-4)
    torch.testing.assert_close(conditional(), unconditional, atol=1e-6, rtol=0)
    x = features[..., : BART.n_embd]
    torch.manual_seed(6)
    post = model.sample_posterior(features, k=2)
    torch.manual_seed(6)
    twin_post = twin.sample_posterior(x, k=2)
    for key in ("z", "log_p", "log_q", "kl"):
        torch.testing.assert_close(getattr(post, key), getattr(twin_post, key), atol=1e-5, rtol=0)


# --- the loss scores the target only -------------------------------------------------------------
@pytest.mark.parametrize("name", BART_MODELS)
@torch.no_grad()
def test_only_target_tokens_and_their_eos_are_scored(name):
    model = bart_model(name)
    ids, mask, cond = bart_batch(seed=3)
    z = model.sample_prior(3, condition=cond)
    predicted = model.predicted_mask(mask, cond)
    target_lengths = torch.tensor([5, 3, 6])
    assert predicted.sum(1).tolist() == (target_lengths + 1).tolist()
    assert model.loss(ids, mask, 1.0, cond).n_tokens.tolist() == (target_lengths + 1).tolist()
    logp = model.decode(ids, z, condition=cond)[0].log_softmax(-1)
    by_hand = torch.stack([-sum(logp[i, t - 1, ids[i, t]] for t in range(2, 2 + n + 1))
                           for i, n in enumerate(target_lengths.tolist())])
    torch.testing.assert_close(model.token_nll(ids, mask, z, cond), by_hand, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", BART_MODELS)
@torch.no_grad()
def test_one_encoder_pass_over_the_source_serves_prior_posterior_and_decoder(name, monkeypatch):
    model = bart_model(name)
    ids, mask, cond = bart_batch(seed=9)
    passes = []
    encode = model.backbone.encode
    monkeypatch.setattr(model.backbone, "encode", lambda i, m=None, **kw: passes.append(i) or encode(i, m, **kw))
    torch.manual_seed(0)
    shared = model.loss(ids, mask, 1.0, cond)
    n_shared = len(passes)  # the source once, and (latent models) the source + target pair for q(z | x, c)
    assert n_shared == (1 if name == "bart" else 2) and passes[0] is cond.ids
    torch.manual_seed(0)  # the same objective from passes that each run the encoder over the source
    post = model.sample_posterior(model.encode(ids, mask, cond), k=1)
    separate = model.token_nll(ids, mask, post.z[0], cond) + model.aggregate_kl(post.kl[0])
    torch.testing.assert_close(shared.loss, separate.mean())
    passes.clear()
    iw_batch(model, ids, mask, k=6, max_rows=6, condition=cond)  # K = 6 samples, decoded 2 at a time
    assert len(passes) == n_shared


@torch.no_grad()
def test_posterior_encoder_reads_source_then_target_and_keeps_the_target_whole():
    model = bart_model("embed")
    ids, mask, cond = bart_batch(seed=4, source_lengths=(7, 2), target_lengths=(3, 5))
    pair, pair_mask = model.source_and_target(ids, mask, cond)
    for i in range(2):
        source = cond.ids[i][cond.mask[i].bool()].tolist()
        target = ids[i, 2:][mask[i, 2:].bool()].tolist()
        assert pair[i][pair_mask[i].bool()].tolist() == source + target
    model.backbone.n_positions = 10  # row 0: 9 + 4 tokens, its source keeps its first 10 - 4; row 1 fits
    pair, pair_mask = model.source_and_target(ids, mask, cond)
    assert pair_mask.tolist() == [[1] * 10, [1] * 10]
    assert pair[0].tolist() == cond.ids[0, :6].tolist() + ids[0, 2:6].tolist()
    assert pair[1].tolist() == cond.ids[1, :4].tolist() + ids[1, 2:8].tolist()
    changed = cond.ids.clone()
    changed[0, 1] = 3 if changed[0, 1] != 3 else 4  # another source token
    x, x_changed = (model.encode(ids, mask, c)[0, :, : BART.n_embd]
                    for c in (cond, Condition(changed, cond.mask, cond.target_start)))
    assert not torch.allclose(x, x_changed)  # the posterior sees the source


# --- generation's KV cache ---------------------------------------------------------------------
@pytest.mark.parametrize("name", BART_MODELS)
@torch.no_grad()
def test_cached_decoding_and_beam_reordering_equal_full_recomputation(name):
    model = bart_model(name, **({"begin_layer": 1} if name == "della" else {}))
    ids, _, cond = bart_batch(seed=5, target_lengths=(6, 6, 6))
    z = model.sample_prior(3, condition=cond)
    full, _ = model.decode(ids, z, condition=cond)
    logits, cache = model.decode(ids[:, :2], z, use_cache=True, condition=cond)
    steps = [logits]
    for t in range(2, ids.shape[1]):
        logits, cache = model.decode(ids[:, t:t + 1], z, cache=cache, use_cache=True, condition=cond)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    rows = torch.tensor([2, 0, 0])  # beam search's reordering (della/generate.py)
    cache = [tuple(t.index_select(0, rows) for t in layer) for layer in cache]
    nxt = torch.full((3, 1), 7)
    step, _ = model.decode(nxt, z[rows], cache=cache, use_cache=True, condition=cond.rows(rows))
    again, _ = model.decode(torch.cat([ids[rows], nxt], 1), z[rows], condition=cond.rows(rows))
    torch.testing.assert_close(step[:, -1], again[:, -1], atol=1e-5, rtol=0)


# --- checkpoints ------------------------------------------------------------------------------------
def outputs(model: LatentModel, conditional: bool, bart: bool):
    if bart:
        ids, mask, cond = bart_batch(seed=6)
    else:
        ids, mask = random_batch()
        cond = Condition(ids[:, :3], mask[:, :3].long(), torch.full((4,), 3)) if conditional else None
    z = model.sample_prior(ids.shape[0], torch.Generator().manual_seed(0), cond)
    return model.encode(ids, mask, cond), model.token_nll(ids, mask, z, cond)


@pytest.mark.parametrize("name, bart, conditional, args", [
    ("della", False, False, {}), ("della", False, True, {}), ("memory", False, True, {}),
    ("della", True, True, {"tie_lm_head": False}), ("softmax", True, True, {}), ("bart", True, True, {})])
@torch.no_grad()
def test_save_and_load_round_trip_gives_identical_outputs(tmp_path, name, bart, conditional, args):
    model = bart_model(name, **args) if bart else tiny_model(name, conditional=conditional, **args)
    if bart:
        model.backbone.final_logits_bias.normal_()  # a buffer: saved with the weights
    model.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["backbone"]["kind"] == ("bart" if bart else "gpt2") and meta["conditional"] == conditional
    loaded = LatentModel.from_pretrained(tmp_path / "m").eval()
    assert type(loaded) is type(model)
    for a, b in zip(outputs(model, conditional, bart), outputs(loaded, conditional, bart)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@torch.no_grad()
def test_a_checkpoint_with_only_gpt2_config_still_loads(tmp_path):
    model = tiny_model("della")
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    meta = json.loads(path.read_text())
    meta["gpt2_config"] = meta.pop("backbone")["config"]  # the layout written before the BART backbone
    del meta["conditional"]
    path.write_text(json.dumps(meta))
    loaded = LatentModel.from_pretrained(tmp_path / "m").eval()
    for a, b in zip(outputs(model, False, False), outputs(loaded, False, False)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


# --- switches and estimators -----------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    {"kl_aggregate": "mean", "first_prior": "learned", "tie_lm_head": False, "pool": "attention",
     "pool_mask": False, "clamp": 5.0},  # the della-official preset
    {"fusion": "add"}, {"shared_latent": True}, {"recurrence": False}, {"kl_layers": "last"},
    {"bn_gamma": 0.5}, {"use_bow": True}])
def test_della_switches_train_on_bart(args):
    model = bart_model("della", **args).train()
    ids, mask, cond = bart_batch(seed=7)
    out = model.loss(ids, mask, 1.0, cond)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", BART_MODELS)
@torch.no_grad()
def test_iw_bound_runs_on_a_bart_cvae_and_is_at_least_the_elbo_of_its_samples(name):
    model = bart_model(name)
    ids, mask, cond = bart_batch(seed=8)
    torch.manual_seed(0)
    est = iw_batch(model, ids, mask, k=6, max_rows=8, condition=cond)
    post = est.posterior
    elbo = -est.rec_nll + (post.log_p.sum(-1) - post.log_q.sum(-1)).mean(0)  # Jensen: IW >= this, per row
    assert torch.isfinite(est.log_marginal).all() and torch.isfinite(elbo).all()
    assert (est.log_marginal >= elbo - 1e-4).all()
    if name == "bart":  # no latent: log p(x | c) is the exact NLL
        torch.testing.assert_close(est.log_marginal, -model.token_nll(ids, mask, post.z[0], cond))


@pytest.mark.parametrize("name, strategy", [("bart", "greedy"), ("della", "beam")])
def test_a_bart_run_trains_evaluates_and_generates_through_the_shared_cli(tmp_path, name, strategy):
    """prepare-data (synthetic-conditional) -> BPE -> train -> evaluate -> generate with backbone.kind bart."""
    from della.cli import main
    from della.data.conditional import read_pairs
    from della.data.tokenizer import BOS, EOS, PAD, Tokenizer, train_bpe

    data, tok, run = tmp_path / "data", tmp_path / "tok", tmp_path / "run"
    main(["prepare-data", "--source", "synthetic-conditional", "--out", str(data), "--max-train-lines", "48",
          "--max-eval-lines", "6"])
    texts = [t for p in read_pairs(data / "train.jsonl") for t in (p.source, p.target)]
    Tokenizer(train_bpe(texts, 300), {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}).save(tok)
    config = {"dataset": "cond", "data_dir": str(data), "tokenizer_dir": str(tok), "model": name, "seed": 1,
              "task": "conditional",
              "backbone": {"kind": "bart", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64},
              "train": {"epochs": 1, "batch_size": 16, "max_length": 64}, "evaluate": {"iw_samples": 3},
              "generate": {"strategy": strategy, "num_beams": 2, "max_new_tokens": 6}}
    run.mkdir()
    (run / "config.yaml").write_text(json.dumps(config))
    main(["train", "--config", str(run / "config.yaml"), "--out", str(run)])
    main(["evaluate", "--run", str(run), "--out", str(run / "eval.json")])
    main(["generate", "--run", str(run), "--out", str(run / "samples.txt")])
    assert json.loads((run / "model" / "config.json").read_text())["backbone"]["kind"] == "bart"
    metrics = json.loads((run / "eval.json").read_text())["metrics"]
    assert metrics["iw_ppl"]["value"] > 1
    if name == "della":
        assert metrics["kl"]["value"] > 0
    assert len((run / "samples.txt").read_text().splitlines()) == len(read_pairs(data / "test.jsonl")) == 6


@torch.no_grad()
def test_beam_search_on_bart_equals_transformers_generate():
    """The plain BART, peaky (scaled embeddings, </s> likelier), three sources of different lengths at
    once: our beam search (decoder prompt </s> <s>, the encoder's states cached) gives HF generate's
    text with the official code's settings (length penalty 1, no early stopping)."""
    from della.config import GenerateConfig
    from della.generate import beam_search

    for seed in range(3):
        model = bart_model("bart", seed=seed)
        model.backbone.bart.shared.weight.mul_(6.0)
        model.backbone.bart.shared.weight[EOS] *= 1.3
        _, _, condition = bart_batch(seed)
        prompt = torch.tensor([[EOS, BOS]] * 3)
        cfg = GenerateConfig(strategy="beam", num_beams=3, max_new_tokens=10, min_new_tokens=3, repetition_penalty=1.2)
        ours = beam_search(model, torch.zeros(3, 0, 0), cfg, prompt, model.encode_source(condition))
        out = hf_bart(model.backbone).generate(
            input_ids=condition.ids, attention_mask=condition.mask.long(), decoder_input_ids=prompt, num_beams=3,
            early_stopping=False, length_penalty=1.0, max_new_tokens=10, min_new_tokens=3, repetition_penalty=1.2,
            do_sample=False, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=BOS, decoder_start_token_id=EOS)
        expected = [r[: r.index(EOS)] if EOS in r else [t for t in r if t != PAD] for r in out[:, 2:].tolist()]
        assert ours == expected, seed


@torch.no_grad()
def test_della_pools_the_condition_by_the_posteriors_pooling_of_each_layer():
    model = bart_model("della", pool="attention")
    for pool in model.pool:
        pool.w.normal_()
    _, _, cond = bart_batch(seed=5)
    torch.testing.assert_close(model.encode_condition(cond), model.encoder_features(model.pool, cond.ids, cond.mask))
