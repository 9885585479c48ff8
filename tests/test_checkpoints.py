"""Importing checkpoints made elsewhere: a tiny random state_dict in the official DELLA layout
(names and shapes of OpenVLG/DELLA `model.py`, reference §2) loads into `della-official` with no
key left over, its posterior mean equals the official computation done by hand from the same
tensors, and `evaluate` runs on the imported run directory; an HF GPT-2 directory becomes the
`gpt2` LM with the same logits."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from della.checkpoints import CheckpointError, import_checkpoint, map_official
from della.cli import main as della_cli
from della.data.tokenizer import load_tokenizer
from della.run import load_trained
from della.run_config_cli import load_workflow_config
from tests.conftest import REPO

L, D, HEADS, P, RANK, POSITIONS = 2, 16, 2, 4, 2, 48


def official_state_dict(vocab_size: int, seed: int = 0, bow: bool = False, width: int = 16) -> dict[str, torch.Tensor]:
    """Random tensors named and shaped as the official `Della.state_dict()` (shared modules appear
    under both encoder. and decoder.)."""
    g = torch.Generator().manual_seed(seed)
    D = width  # shadows the module default for this state_dict

    def rand(*shape, scale=0.3, centre=0.0):
        return centre + scale * torch.randn(*shape, generator=g)

    shared = {"wte.weight": rand(vocab_size, D), "wpe.weight": rand(POSITIONS, D),
              "ln_f.weight": rand(D, centre=1.0), "ln_f.bias": rand(D)}
    for i in range(L):
        block = {"ln_1.weight": rand(D, centre=1.0), "ln_1.bias": rand(D),
                 "attn.bias": torch.tril(torch.ones(POSITIONS, POSITIONS, dtype=torch.uint8)).view(1, 1, POSITIONS, POSITIONS),
                 "attn.masked_bias": torch.tensor(-1e4),
                 "attn.c_attn.weight": rand(D, 3 * D), "attn.c_attn.bias": rand(3 * D),
                 "attn.c_proj.weight": rand(D, D), "attn.c_proj.bias": rand(D),
                 "ln_2.weight": rand(D, centre=1.0), "ln_2.bias": rand(D),
                 "mlp.c_fc.weight": rand(D, 4 * D), "mlp.c_fc.bias": rand(4 * D),
                 "mlp.c_proj.weight": rand(4 * D, D), "mlp.c_proj.bias": rand(D)}
        for j in range(RANK):
            block |= {f"attn.lmf.text_factor.{j}.weight": rand(D, D + 1), f"attn.lmf.text_factor.{j}.bias": rand(D),
                      f"attn.lmf.latent_factor.{j}.weight": rand(D, P + 1), f"attn.lmf.latent_factor.{j}.bias": rand(D)}
        shared |= {f"h.{i}.{k}": v for k, v in block.items()}
    state = {f"encoder.{k}": v for k, v in shared.items()} | {f"decoder.{k}": v for k, v in shared.items()}
    for i in range(L):
        state |= {f"encoder.recog_network.{i}.weight": rand(2 * P, D + P), f"encoder.recog_network.{i}.bias": rand(2 * P),
                  f"encoder.prior_network.{i}.weight": rand(2 * P, P), f"encoder.prior_network.{i}.bias": rand(2 * P),
                  f"encoder.pooling.{i}.attention_weights": rand(D)}
        for cell in ("ih", "hh"):
            state |= {f"encoder.reccurnt_cell_weight_{cell}.{i}.weight": rand(P, P),
                      f"encoder.reccurnt_cell_weight_{cell}.{i}.bias": rand(P)}
    state["decoder.lm_head.weight"] = rand(vocab_size, D)
    if bow:
        state |= {"decoder.mlp_bow.weight": rand(D, P), "decoder.mlp_bow.bias": rand(D)}
    return state


def official_posterior_mean_layer0(state, ids, mask):
    """The official encoder up to the first latent layer, written out from the tensors: block 0
    bidirectional with the additive padding mask, attention pooling over every position (pads
    included), h_0 = tanh(b_hh + b_ih) (z_{-1} = h_{-1} = 0), RecogNet([x; h_0]), clamp ±5."""
    s = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    N, T = ids.shape
    x = s["wte.weight"][ids] + s["wpe.weight"][:T]
    a = F.layer_norm(x, (D,), s["h.0.ln_1.weight"], s["h.0.ln_1.bias"])
    q, k, v = (a @ s["h.0.attn.c_attn.weight"] + s["h.0.attn.c_attn.bias"]).split(D, dim=2)
    q, k, v = (t.view(N, T, HEADS, D // HEADS).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // HEADS) + (1.0 - mask[:, None, None, :]) * -10000.0
    attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(N, T, D)
    x = x + attn @ s["h.0.attn.c_proj.weight"] + s["h.0.attn.c_proj.bias"]
    m = F.layer_norm(x, (D,), s["h.0.ln_2.weight"], s["h.0.ln_2.bias"])
    x = x + F.gelu(m @ s["h.0.mlp.c_fc.weight"] + s["h.0.mlp.c_fc.bias"], approximate="tanh") @ \
        s["h.0.mlp.c_proj.weight"] + s["h.0.mlp.c_proj.bias"]
    alpha = F.gelu(x @ s["pooling.0.attention_weights"], approximate="tanh").softmax(-1)
    pooled = (alpha[..., None] * x).sum(1)
    h0 = torch.tanh(s["reccurnt_cell_weight_hh.0.bias"] + s["reccurnt_cell_weight_ih.0.bias"]).expand(N, P)
    recog = torch.cat([pooled, h0], -1) @ s["recog_network.0.weight"].T + s["recog_network.0.bias"]
    return recog.clamp(-5, 5)[:, :P]


@pytest.fixture
def workdir(corpus, tmp_path, monkeypatch):
    """A working directory whose results/default/ (the embedded config's experiment) holds the tiny
    corpus and tokenizer as `synthetic`."""
    for kind, src in (("data", "data"), ("tokenizers", "tok")):
        (tmp_path / "results" / "default" / kind).mkdir(parents=True)
        os.symlink(corpus / src, tmp_path / "results" / "default" / kind / "synthetic")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def import_official(workdir, state, **kwargs):
    torch.save(state, workdir / "model_epoch_1.pt")
    return import_checkpoint("della-official", workdir / "model_epoch_1.pt", load_workflow_config(REPO / "config/config.yaml"),
                             "synthetic", "della-official", 0, workdir / "run", n_head=HEADS, results="results/default",
                             **kwargs)


def test_an_official_state_dict_maps_onto_every_parameter_exactly_once(workdir):
    vocab = load_tokenizer(workdir / "results/default/tokenizers/synthetic").vocab_size
    state = official_state_dict(vocab, bow=True)
    run = import_official(workdir, state)
    cfg, model, _, _ = load_trained(run)
    assert cfg.model == "della" and cfg.model_args["pool"] == "attention" and cfg.model_args["use_bow"]
    assert (cfg.backbone.n_layer, cfg.backbone.n_embd, cfg.model_args["latent_size"], cfg.model_args["lmf_rank"]) == (L, D, P, RANK)
    mapped = map_official(state, model.layers, "test")
    assert set(mapped) == set(model.state_dict())  # the strict load in the import saw the same
    assert torch.equal(model.fusion.text_weight[1, 1], state["encoder.h.1.attn.lmf.text_factor.1.weight"])
    assert torch.equal(model.lm_head.weight, state["decoder.lm_head.weight"])
    assert json.loads((run / "imported.json").read_text())["format"] == "della-official"


def test_the_imported_posterior_mean_is_the_official_computation(workdir):
    vocab = load_tokenizer(workdir / "results/default/tokenizers/synthetic").vocab_size
    state = official_state_dict(vocab, seed=1)
    _, model, tok, _ = load_trained(import_official(workdir, state))
    ids = torch.tensor([[tok.bos_id, 5, 9, 14, 7, tok.eos_id], [tok.bos_id, 11, 6, tok.eos_id, tok.pad_id, tok.pad_id]])
    mask = (torch.arange(6)[None] < torch.tensor([[6], [4]])).float()
    with torch.no_grad():
        mean = model.sample_posterior(model.encode(ids, mask), k=1).mean[0, :, 0]
    expected = official_posterior_mean_layer0(state, ids, mask)
    assert expected.abs().max() > 0.1  # not a trivially zero piece
    torch.testing.assert_close(mean, expected, rtol=1e-4, atol=1e-5)


def test_an_imported_official_checkpoint_evaluates(workdir):
    vocab = load_tokenizer(workdir / "results/default/tokenizers/synthetic").vocab_size
    run = import_official(workdir, official_state_dict(vocab, seed=2))
    della_cli(["evaluate", "--run", str(run), "--split", "test", "--out", str(workdir / "eval.json")])
    metrics = json.loads((workdir / "eval.json").read_text())["metrics"]
    assert math.isfinite(metrics["iw_ppl"]["value"]) and metrics["iw_ppl"]["value"] > 1
    assert len(metrics["kl"]["details"]["per_group"]) == L


def test_a_state_dict_with_a_foreign_key_layout_or_vocabulary_is_refused(workdir):
    vocab = load_tokenizer(workdir / "results/default/tokenizers/synthetic").vocab_size
    state = official_state_dict(vocab)
    with pytest.raises(CheckpointError, match="vocabulary of"):
        import_official(workdir, official_state_dict(vocab + 3))
    del state["encoder.recog_network.1.bias"]
    with pytest.raises(CheckpointError, match="recog_network.1.bias"):
        import_official(workdir, state)
    state = official_state_dict(vocab)
    state["decoder.h.0.ln_1.bias"] = state["decoder.h.0.ln_1.bias"] + 1
    with pytest.raises(CheckpointError, match="shares them"):
        import_official(workdir, state)
    torch.save(official_state_dict(vocab), workdir / "ok.pt")
    with pytest.raises(CheckpointError, match=r"'pool': 'first_token'.*depart from the official code"):
        import_checkpoint("della-official", workdir / "ok.pt", load_workflow_config(REPO / "config/config.yaml"),
                          "synthetic", "della", 0, workdir / "run", n_head=HEADS,  # the paper preset
                          results="results/default")


def test_an_hf_gpt2_directory_becomes_the_lm_with_the_same_logits(workdir):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = load_tokenizer(workdir / "results/default/tokenizers/synthetic")
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_positions=POSITIONS, n_embd=D, n_layer=L,
                                    n_head=HEADS)).eval()
    hf.save_pretrained(workdir / "hf")
    run = workdir / "hf-run"
    della_cli(["import-checkpoint", "--format", "hf-gpt2", "--source", str(workdir / "hf"), "--dataset", "synthetic",
               "--config", str(REPO / "config/config.yaml"), "--out", str(run)])
    cfg, model, _, _ = load_trained(run)
    assert cfg.model == "gpt2" and (cfg.backbone.n_layer, cfg.backbone.n_embd) == (L, D)
    ids = torch.tensor([[tok.bos_id, 5, 9, 14, tok.eos_id]])
    with torch.no_grad():
        torch.testing.assert_close(model.decode(ids, torch.zeros(1, 0, 0))[0], hf(ids).logits, rtol=1e-4, atol=1e-5)
    della_cli(["evaluate", "--run", str(run), "--split", "test", "--out", str(workdir / "eval.json")])
    assert json.loads((workdir / "eval.json").read_text())["metrics"]["iw_ppl"]["value"] > 1
