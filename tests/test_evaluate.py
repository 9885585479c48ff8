"""eval.json's representation metrics: rows stay paired with their sentence, every PPL convention
under its own key, MI with its standard error, AU on path-averaged means, tiny splits give null."""

from __future__ import annotations

import json
import math

import pytest
import torch

from della.config import RunConfig
from della.estimators import active_units
from della.evaluate import PPL_CONVENTIONS, collect, evaluate, ppl_metrics, representation_metrics
from della.metric_spec import MetricSpec
from della.models.base import gaussian_log_density
from della.train import train
from tests.conftest import TINY, VOCAB, tiny_model
from tests.test_estimators import _della_with_known_means
from della.batches import EncodedSplit
from tests.test_train import run_config


def _split(lengths: list[int], seed: int = 0) -> EncodedSplit:
    """Sentences [<s>, tokens..., </s>] of the given numbers of tokens, in this (unsorted) order."""
    g = torch.Generator().manual_seed(seed)
    return EncodedSplit("x", [[VOCAB.bos_id, *torch.randint(3, VOCAB.size, (n,), generator=g).tolist(),
                               VOCAB.eos_id] for n in lengths])


LENGTHS = [7, 2, 5, 9, 3, 6, 1, 8]  # length-sorted batches of 3 reorder and regroup them


@pytest.mark.parametrize("name", ["embed", "della"])
def test_collect_keeps_each_row_with_its_own_sentence(name):
    """Batches are length-sorted; every per-sentence tensor must land on its sentence's row,
    and z, mean, logvar and features of a row must come from the same sentence."""
    model = tiny_model(name)
    split = _split(LENGTHS)
    torch.manual_seed(0)
    acc = collect(model, split, k=1, batch_size=3, device="cpu")
    for i, seq in enumerate(split.sequences):
        alone = torch.tensor([seq])
        assert torch.allclose(acc["features"][i], model.encode(alone, torch.ones_like(alone))[0], atol=1e-5)
        assert acc["n_pred"][i] == len(seq) - 1
    own = model.log_q_matrix(acc["z"], acc["features"]).diagonal()
    if name == "embed":  # one group: q(z_i | x_i) = N(z_i; mean_i, logvar_i)
        assert torch.allclose(own, gaussian_log_density(acc["z"], acc["mean"], acc["logvar"]).sum(-1), atol=1e-4)


def test_every_ppl_convention_is_its_own_key_with_its_own_estimator_and_word_count():
    acc = {"rec_nll": torch.zeros(2), "n_pred": torch.tensor([4.0, 6.0]),
           "log_marginal": torch.tensor([-10.0, -20.0]), "log_marginal_layer_mean": torch.tensor([-8.0, -16.0])}
    out = ppl_metrics(acc, k=5, n_groups=3)
    expected = {"iw_ppl": math.exp(30 / 10), "iw_ppl_bos": math.exp(30 / 12),
                "iw_ppl_layer_mean": math.exp(24 / 10), "iw_ppl_official": math.exp(24 / 12)}
    assert set(PPL_CONVENTIONS) == set(expected)
    for key, value in expected.items():
        assert out[key]["value"] == pytest.approx(value)
        _, estimator, words = PPL_CONVENTIONS[key]
        assert f"est={estimator}|words={words}" in out[key]["signature"]
    assert "est=hierarchical|words=bpe+eos" in out["iw_ppl"]["signature"]
    assert out["iw_nll"]["value"] == pytest.approx(15.0)
    conditional = ppl_metrics(acc, k=5, n_groups=3, conditional=True)  # no <s> in a source -> target sequence
    assert all(conditional[key]["value"] is None and "conditional" in conditional[key]["error"]
               for key in ("iw_ppl_bos", "iw_ppl_official"))
    assert {key: conditional[key] for key in ("iw_ppl", "iw_ppl_layer_mean", "iw_nll")} == \
        {key: out[key] for key in ("iw_ppl", "iw_ppl_layer_mean", "iw_nll")}


def test_mi_entry_is_the_paired_estimate_with_a_deterministic_stderr_and_he2019_beside_it():
    model = tiny_model("della")
    torch.manual_seed(0)
    acc = collect(model, _split(LENGTHS * 3), k=2, batch_size=4, device="cpu")
    first, again = (representation_metrics(model, acc, k=2, mi_batch_size=None)["mi"] for _ in range(2))
    assert first == again
    assert first["stderr"] > 0 and math.isfinite(first["value"])
    assert {"he2019", "he2019_stderr", "upper_bound_log_M"} <= set(first["details"])
    assert "paired" in first["signature"] and "n=24" in first["signature"]


@pytest.mark.parametrize("name", ["della", "embed"])
def test_kl_and_elbo_in_both_conventions_sum_and_official_layer_mean(name):
    """The layer-mean KL (the official code's, reference D1) is the summed KL over the model's groups,
    and its ELBO the reconstruction plus that KL; with one latent group the two conventions agree."""
    model = tiny_model(name)
    torch.manual_seed(0)
    out = representation_metrics(model, collect(model, _split(LENGTHS * 2), k=2, batch_size=4, device="cpu"),
                                 k=2, mi_batch_size=None)
    G = model.n_groups
    assert G == (TINY.n_layer if name == "della" else 1)
    kl, kl_mean = out["kl"]["value"], out["kl_layer_mean"]["value"]
    assert kl > 0 and kl_mean == pytest.approx(kl / G, rel=1e-6)
    rec = out["neg_elbo"]["details"]["reconstruction_nll"]
    assert out["neg_elbo"]["value"] == pytest.approx(rec + kl, rel=1e-6)
    assert out["neg_elbo_layer_mean"]["value"] == pytest.approx(rec + kl / G, rel=1e-6)
    assert f"mean over {G} group(s)" in out["kl_layer_mean"]["signature"]


def test_a_collapsed_della_posterior_reports_mi_zero():
    model = tiny_model("della", first_prior="learned")
    with torch.no_grad():
        for g in range(model.n_groups):
            model.recog_x[g].weight.zero_()
    torch.manual_seed(0)
    acc = collect(model, _split(LENGTHS * 3), k=2, batch_size=4, device="cpu")
    mi = representation_metrics(model, acc, k=2, mi_batch_size=None)["mi"]
    assert abs(mi["value"]) < 1e-4 and mi["stderr"] < 1e-4


def test_au_uses_the_means_averaged_over_the_k_paths_less_their_path_noise():
    """A model whose E_q[z_2 | x] is the same for every x: with one path the layer-2 means vary
    (spurious active units); averaged over K paths, with the averages' path noise (variance
    3.5 / K per dim, above 0.01 at K = 100) subtracted, they do not; layer 1's means are exact."""
    model = _della_with_known_means()
    split = _split([5] * 200)
    torch.manual_seed(0)
    one_path = representation_metrics(model, collect(model, split, 1, 50, "cpu"), k=1, mi_batch_size=None)
    acc = collect(model, split, 100, 50, "cpu")
    averaged = representation_metrics(model, acc, k=100, mi_batch_size=None)
    layer1 = model.recog_x[0](acc["features"][:, 0])[:, :model.latent_size]
    assert torch.allclose(acc["mean"][:, 0], layer1, atol=1e-5)
    assert one_path["au"]["details"]["per_group"][1] > 0
    assert averaged["au"]["details"]["per_group"][1] == averaged["au_001"]["details"]["per_group"][1] == 0
    assert active_units(acc["mean"], 0.01)[1].any()  # what AU@0.01 counted before the correction
    for key in ("au", "au_001"):  # per-group mean as the value, the total in the details
        entry = averaged[key]
        assert entry["value"] == pytest.approx(entry["details"]["total"] / 2) and entry["decimals"] == 2
        assert entry["details"]["total"] == sum(entry["details"]["per_group"]) and entry["details"]["dims"] == 16


def test_a_one_line_test_split_reports_mi_and_au_as_null_with_the_reason(corpus, tmp_path):
    cfg = run_config(corpus, model="embed", epochs=1).to_dict()
    cfg["evaluate"]["max_lines"] = 1
    train(RunConfig.from_dict(cfg), tmp_path / "run")
    evaluate(tmp_path / "run", "test", tmp_path / "eval.json")
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert metrics["iw_ppl"]["value"] > 1 and metrics["kl"]["value"] is not None
    for key in ("mi", "au", "au_001"):
        assert metrics[key]["value"] is None and "stderr" not in metrics[key]
        assert metrics[key]["error"] == f"not computable: {key.split('_')[0]} needs at least 2 examples, got 1"


def test_test_examples_cut_to_max_length_are_named_in_every_signature(corpus, tmp_path):
    """A test sentence longer than train.max_length is scored cut (with </s> at the cut): the
    numbers then depend on a training setting, so every entry's signature, hence the table's
    footnote, says how many were cut."""
    cfg = run_config(corpus, model="embed", epochs=1, max_length=8).to_dict()
    cfg["evaluate"]["max_lines"] = 20
    train(RunConfig.from_dict(cfg), tmp_path / "run")
    result = evaluate(tmp_path / "run", "test", tmp_path / "eval.json")
    cut = result["data"]["truncated"]
    assert 0 < cut <= 20
    for key, entry in result["metrics"].items():
        assert entry["signature"].endswith(f"|{cut} of 20 examples cut to train.max_length=8"), key


def test_metric_entry_keeps_a_finite_stderr_only_beside_a_finite_value():
    spec = MetricSpec("MI", True, 2)
    assert spec.entry(0.25, stderr=0.03)["stderr"] == 0.03
    assert "stderr" not in spec.entry(0.25) and "stderr" not in spec.entry(0.25, stderr=float("nan"))
    missing = spec.entry(None, error="too few", stderr=0.03)
    assert missing["value"] is None and missing["error"] == "too few" and "stderr" not in missing


def test_the_kl_entries_equal_the_closed_form_of_known_posteriors_and_priors():
    """DELLA whose latent heads are constants: q(z_l | x, z_<l) = N(1, 0.5^2) in every layer, p(z_1) =
    N(0, 1) and p(z_l | z_<l) = N(0.3, 2^2) above it (the recurrence is tanh(0) = 0). Per dimension
    KL(N(a, s^2) || N(b, t^2)) = log(t / s) + (s^2 + (a - b)^2) / (2 t^2) - 1/2, summed over p = 4 dims
    and over the 3 layers (`kl`), or averaged over them (`kl_layer_mean`, the official code's)."""
    model = tiny_model("della", begin_layer=0, end_layer=2, latent_size=4)
    p = model.latent_size
    with torch.no_grad():
        for module in (model.recog_x, model.recog_h, model.prior, model.cell_ih, model.cell_hh):
            for param in module.parameters():
                param.zero_()
        model.recog_x.bias[:, :p], model.recog_x.bias[:, p:] = 1.0, 2 * math.log(0.5)
        model.prior.bias[:, :p], model.prior.bias[:, p:] = 0.3, 2 * math.log(2.0)

    def kl(a, s, b, t):
        return p * (math.log(t / s) + (s ** 2 + (a - b) ** 2) / (2 * t ** 2) - 0.5)

    layers = [kl(1.0, 0.5, 0.0, 1.0), kl(1.0, 0.5, 0.3, 2.0), kl(1.0, 0.5, 0.3, 2.0)]
    assert model.n_groups == 3
    acc = collect(model, _split(LENGTHS), 4, 3, "cpu")
    out = representation_metrics(model, acc, k=4, mi_batch_size=None)
    assert out["kl"]["value"] == pytest.approx(sum(layers), rel=1e-5)
    assert out["kl_layer_mean"]["value"] == pytest.approx(sum(layers) / 3, rel=1e-5)
    assert out["kl"]["details"]["per_group"] == pytest.approx(layers, rel=1e-5)
    assert out["neg_elbo"]["value"] == pytest.approx(out["kl"]["value"] + acc["rec_nll"].mean().item(), rel=1e-6)
