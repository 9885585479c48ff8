"""`python -m della evaluate --run RUN_DIR --split test --out eval.json`: representation metrics.

IW-PPL / IW-NLL (K importance samples), ELBO, KL (total and per group), MI, AU, and on corpora
with known attributes (the synthetic grammar) a linear probe of the posterior means.
Word-count convention of the PPL: predicted tokens, i.e. BPE tokens + </s> per sentence (<s> is
never predicted); the official DELLA convention (+1 for <s>) is recorded in the details.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from della.batches import collate, length_sorted_batches
from della.estimators import active_units, iw_batch, mutual_information
from della.io import atomic_write_json
from della.metric_spec import MetricSpec
from della.provenance import provenance
from della.run import load_trained
from della.train import load_split

log = logging.getLogger(__name__)
NO_LATENT = "the model has no latent variable"


# declared once, copied into every eval.json entry
METRICS = {
    "iw_ppl": MetricSpec("PPL", False, 2), "iw_nll": MetricSpec("NLL", False, 2),
    "neg_elbo": MetricSpec("ELBO", False, 2), "kl": MetricSpec("KL", True, 2), "mi": MetricSpec("MI", True, 2),
    "au": MetricSpec("AU", True, 1), "au_001": MetricSpec("AU@0.01", True, 0),
    "iw_ppl_official": MetricSpec("PPL (official est.)", False, 2),
}


@torch.no_grad()
def collect(model, split, k: int, batch_size: int, device) -> dict[str, torch.Tensor]:
    """Run the IW estimator over a split; returns per-sentence tensors in split order."""
    n = len(split.sequences)
    keys = ("log_marginal", "log_marginal_layer_mean", "rec_nll", "n_pred")
    acc = {key: torch.zeros(n) for key in keys}
    G, p, d = model.n_groups, model.latent_size, model.backbone.n_embd
    acc.update(kl=torch.zeros(n, G), z=torch.zeros(n, G, p), mean=torch.zeros(n, G, p),
               logvar=torch.zeros(n, G, p), features=torch.zeros(n, G, d))
    batches = list(length_sorted_batches(split.sequences, batch_size))
    for idx in tqdm(batches, desc=f"evaluate (K={k})", unit="batch", mininterval=2.0):
        ids, mask = collate([split.sequences[i] for i in idx], model.vocab.pad_id, device)
        est = iw_batch(model, ids, mask, k)
        post = est.posterior
        rows = torch.tensor(idx)
        acc["log_marginal"][rows] = est.log_marginal.cpu()
        acc["log_marginal_layer_mean"][rows] = est.log_marginal_layer_mean.cpu()
        acc["rec_nll"][rows] = est.rec_nll.cpu()
        acc["n_pred"][rows] = mask[:, 1:].sum(1).cpu()
        acc["kl"][rows] = est.kl.cpu()
        for key, value in (("z", post.z[0]), ("mean", post.mean[0]), ("logvar", post.logvar[0]),
                           ("features", est.features)):
            acc[key][rows] = value.cpu()
    return acc


def representation_metrics(model, acc: dict, k: int, mi_batch_size: int | None) -> dict[str, dict]:
    n = acc["rec_nll"].shape[0]
    words = acc["n_pred"].sum().item()
    nll_total = -acc["log_marginal"].sum().item()
    G, p = model.n_groups, model.latent_size
    sig = f"K={k}|words=bpe+eos|n={n}"
    out = {
        "iw_ppl": METRICS["iw_ppl"].entry(math.exp(nll_total / words), signature=sig,
            details={"word_count": words, "estimator": "exact" if G == 0 else "importance-weighted"}),
        "iw_nll": METRICS["iw_nll"].entry(nll_total / n, signature=sig),
    }
    if G == 0:
        for key in ("neg_elbo", "kl", "mi", "au"):
            out[key] = METRICS[key].entry(None, error=NO_LATENT)
        return out
    kl_total = acc["kl"].sum(1)
    out["neg_elbo"] = METRICS["neg_elbo"].entry((acc["rec_nll"] + kl_total).mean().item(), signature=sig,
        details={"reconstruction_nll": acc["rec_nll"].mean().item()})
    out["kl"] = METRICS["kl"].entry(kl_total.mean().item(), signature=f"analytic|sum over {G} group(s)",
        details={"per_group": acc["kl"].mean(0).tolist()})
    m = mi_batch_size or n
    mi = mutual_information(model, acc["features"], acc["z"], acc["logvar"], mi_batch_size)
    out["mi"] = METRICS["mi"].entry(mi, signature=f"He2019|M={m}|hierarchical" if G > 1 else f"He2019|M={m}",
        details={"upper_bound_log_M": math.log(m)})
    active02 = active_units(acc["mean"], 0.2)
    active001 = active_units(acc["mean"], 0.01)
    out["au"] = METRICS["au"].entry(active02.sum().item() / G,
        signature=f"delta=0.2|>=|mean count per group of {p}",
        details={"per_group": active02.sum(1).tolist()})
    out["au_001"] = METRICS["au_001"].entry(active001.sum().item(),
        signature=f"delta=0.01|>=|count over {G}x{p} dims")
    if G > 1:  # the official code's layer-averaged estimator and word count (reference §8.1, D2, D9)
        official_words = words + n
        out["iw_ppl_official"] = METRICS["iw_ppl_official"].entry(
            math.exp(-acc["log_marginal_layer_mean"].sum().item() / official_words),
            signature=f"K={k}|layer-mean log p(z)-log q(z)|words=bpe+bos+eos",
            details={"note": "not a bound on log p(x); for comparison with the code"})
    return out


def probe_metrics(model, cfg, tokenizer, test_means: torch.Tensor, device, max_train: int = 2000) -> dict:
    """Linear probe: logistic regression from posterior means (train split) to each known
    attribute, accuracy on the evaluated split, beside the majority-class baseline."""
    from sklearn.linear_model import LogisticRegression

    from della.data.corpus import read_attributes

    data = Path(cfg.data_dir)
    if model.n_groups == 0 or not (data / "train.attributes.jsonl").exists():
        return {}
    train_split = load_split(cfg, "train", tokenizer, max_train)
    train_attrs = read_attributes(data / "train.attributes.jsonl")[:max_train]
    test_attrs = read_attributes(data / "test.attributes.jsonl")[: test_means.shape[0]]
    train_means = collect(model, train_split, 1, cfg.evaluate.batch_size, device)["mean"]
    x_train, x_test = train_means.flatten(1).numpy(), test_means.flatten(1).numpy()
    out = {}
    for attr in sorted(train_attrs[0]):
        y_train = np.array([a[attr] for a in train_attrs])
        y_test = np.array([a[attr] for a in test_attrs])
        clf = LogisticRegression(max_iter=2000).fit(x_train, y_train)
        values, counts = np.unique(y_train, return_counts=True)
        majority = float(np.mean(y_test == values[counts.argmax()]))
        out[f"probe_{attr}"] = MetricSpec(f"probe:{attr}", True, 3).entry(
            float(np.mean(clf.predict(x_test) == y_test)), signature=f"logreg|train n={len(y_train)}|posterior means",
            details={"majority_baseline": majority})
    return out


def evaluate(run_dir: Path, split: str, out_path: Path) -> dict:
    cfg, model, tokenizer, device = load_trained(run_dir)
    data = load_split(cfg, split, tokenizer, cfg.evaluate.max_lines)
    start = time.perf_counter()
    acc = collect(model, data, cfg.evaluate.iw_samples, cfg.evaluate.batch_size, device)
    metrics = representation_metrics(model, acc, cfg.evaluate.iw_samples, cfg.evaluate.mi_batch_size)
    if split == "test":
        metrics.update(probe_metrics(model, cfg, tokenizer, acc["mean"], device))
    result = {"kind": "eval", "metrics": metrics, "split": split, "data": data.summary(),
              "config": cfg.to_dict(), "seed": cfg.seed, "seconds": time.perf_counter() - start,
              "provenance": provenance(device)}
    atomic_write_json(out_path, result)
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory of a trained model")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--out", required=True, help="output JSON")


def run(args: argparse.Namespace) -> None:
    result = evaluate(Path(args.run), args.split, Path(args.out))
    log.info("%s", {k: v["value"] for k, v in result["metrics"].items()})
