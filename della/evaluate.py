"""`python -m della evaluate --run RUN_DIR --split test --out eval.json`: representation metrics.

IW-PPL / IW-NLL (K importance samples), ELBO, KL (total and per group), MI (paired estimator, with
He et al.'s beside it and a bootstrap standard error), AU (on posterior means averaged over the K
paths), and on corpora with known attributes (the synthetic grammar) a linear probe of those means.
The PPL is reported under each convention, estimator x word count (PPL_CONVENTIONS); the headline
`iw_ppl` is the hierarchical estimator over the predicted tokens (BPE + </s>; <s> is never predicted).
A split too small for an estimator (estimators.MIN_EXAMPLES) gives null with the reason, never a number.
On a conditional task (a CVAE) every estimate is of log p(x | c) with the conditional prior p(z | c),
over the target's tokens and its </s>: the paper prints only KL and AU (Table 2); the rest is in
eval.json for reference. MI is then I(z; source, target) under the aggregate posterior.
Evaluation runs at the precision the model was trained at (`train.precision` of the run config, recorded
in eval.json): under bf16 the passes autocast while densities, KL and the log-sum-exp stay fp32.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from della.batches import collate_batch, length_sorted_batches
from della.estimators import (TooFewExamples, active_units, bootstrap_stderr, iw_batch, iw_rows, mutual_information,
                              path_averaged_means, path_mean_noise, require_examples)
from della.io import atomic_write_json
from della.metric_spec import MetricSpec
from della.provenance import provenance
from della.run import load_trained
from della.train import autocast, load_split

log = logging.getLogger(__name__)
NO_LATENT = "the model has no latent variable"
NO_BOS_COUNT = ("the official word count (<s> + BPE + </s>, its attention_mask.sum()) is the sentence code's: "
                "a conditional sequence has none")

# key: (label, log p(x) estimator, word count). hierarchical: sums over layers (a bound on log p(x));
# layer-mean: the official code's (1/G) sums (reference §8.1, D2). bpe+eos: the predicted tokens;
# bos+bpe+eos: the official code's attention_mask.sum() (D9). For G <= 1 both estimators agree.
PPL_CONVENTIONS = {
    "iw_ppl": ("PPL", "hierarchical", "bpe+eos"),
    "iw_ppl_bos": ("PPL (+<s>)", "hierarchical", "bos+bpe+eos"),
    "iw_ppl_layer_mean": ("PPL (layer-mean)", "layer-mean", "bpe+eos"),
    "iw_ppl_official": ("PPL (official)", "layer-mean", "bos+bpe+eos"),
}
AU_THRESHOLDS = {"au": 0.2, "au_001": 0.01}  # the DELLA code's delta; He et al.'s and Optimus's

# declared once, copied into every eval.json entry
METRICS = {
    **{key: MetricSpec(label, False, 2) for key, (label, _, _) in PPL_CONVENTIONS.items()},
    "iw_nll": MetricSpec("NLL", False, 2), "neg_elbo": MetricSpec("ELBO", False, 2),
    "kl": MetricSpec("KL", True, 2),
    # the official DELLA code's KL (its loss and printed KL), the mean over layers (reference D1)
    "neg_elbo_layer_mean": MetricSpec("ELBO (layer-mean)", False, 2),
    "kl_layer_mean": MetricSpec("KL (layer-mean)", True, 2),
    "mi": MetricSpec("MI", True, 2),
    "au": MetricSpec("AU", True, 2), "au_001": MetricSpec("AU@0.01", True, 2),
}


@torch.no_grad()
def collect(model, split, k: int, batch_size: int, device, rows_per_pass: int | str = "auto") -> dict[str, torch.Tensor]:
    """Run the IW estimator over a split; returns per-sentence tensors in split order. z, logvar
    are the first sampled path (for MI); mean is averaged over the K paths, mean_noise the variance
    of that average (Var_paths / K; both for AU).
    rows_per_pass: evaluate.iw_rows, the sequences a decoder pass takes (della.estimators.iw_rows)."""
    n = len(split.sequences)
    # Accumulated on the device and copied to the host once: a copy per batch would stall the GPU.
    zeros = partial(torch.zeros, device=device)
    acc = {key: zeros(n) for key in ("log_marginal", "log_marginal_layer_mean", "rec_nll", "n_pred")}
    G, p, d = model.n_groups, model.latent_size, model.feature_size
    acc.update(kl=zeros(n, G), z=zeros(n, G, p), mean=zeros(n, G, p), mean_noise=zeros(n, G, p), logvar=zeros(n, G, p),
               features=zeros(n, G, d))
    batches = list(length_sorted_batches(split.sequences, batch_size))
    for idx in tqdm(batches, desc=f"evaluate (K={k})", unit="batch", mininterval=2.0):
        ids, mask, condition = collate_batch(split, idx, model.vocab.pad_id, device)
        max_rows = iw_rows(rows_per_pass, device, ids.shape[1], model.vocab.size, model.backbone.n_embd)
        est = iw_batch(model, ids, mask, k, max_rows=max_rows, condition=condition)
        post = est.posterior
        rows = torch.tensor(idx, device=device)
        for key, value in (("log_marginal", est.log_marginal), ("log_marginal_layer_mean", est.log_marginal_layer_mean),
                           ("rec_nll", est.rec_nll), ("n_pred", model.predicted_mask(mask, condition).sum(1)),
                           ("kl", est.kl), ("z", post.z[0]), ("mean", path_averaged_means(post)),
                           ("mean_noise", path_mean_noise(post)),
                           ("logvar", post.logvar[0]), ("features", est.features)):
            acc[key][rows] = value
    return {key: value.cpu() for key, value in acc.items()}


@torch.no_grad()
def posterior_means(model, split, k: int, batch_size: int, device) -> torch.Tensor:
    """E_q[z | x] (N, G, p) over k paths, as `collect` computes it, from the encoder and latent
    heads alone (no decoder pass)."""
    means = torch.zeros(len(split.sequences), model.n_groups, model.latent_size, device=device)
    for idx in length_sorted_batches(split.sequences, batch_size):
        features = model.encode(*collate_batch(split, idx, model.vocab.pad_id, device))
        means[torch.tensor(idx, device=device)] = path_averaged_means(model.sample_posterior(features, k))
    return means.cpu()


def ppl_metrics(acc: dict, k: int, n_groups: int, conditional: bool = False) -> dict[str, dict]:
    """Every PPL convention; on a conditional run the "+<s>" ones are null (NO_BOS_COUNT)."""
    n = acc["rec_nll"].shape[0]
    log_marginal = {"hierarchical": acc["log_marginal"].sum().item(),
                    "layer-mean": acc["log_marginal_layer_mean"].sum().item()}
    words = {"bpe+eos": acc["n_pred"].sum().item()}
    words["bos+bpe+eos"] = words["bpe+eos"] + n
    kind = "exact" if n_groups == 0 else "importance-weighted"
    out = {}
    for key, (_, estimator, count) in PPL_CONVENTIONS.items():
        if conditional and count == "bos+bpe+eos":
            out[key] = METRICS[key].entry(None, error=f"not computable: {NO_BOS_COUNT}")
            continue
        out[key] = METRICS[key].entry(math.exp(-log_marginal[estimator] / words[count]),
            signature=f"K={k}|est={estimator}|words={count}|n={n}",
            details={"word_count": words[count], "estimator": kind})
    out["iw_nll"] = METRICS["iw_nll"].entry(-log_marginal["hierarchical"] / n,
                                            signature=f"K={k}|est=hierarchical|n={n}")
    return out


def mi_entry(model, acc: dict, mi_batch_size: int | None) -> dict:
    n = acc["z"].shape[0]
    try:
        device = next(model.parameters()).device  # `collect` keeps the per-sentence tensors on the CPU
        on_device = {key: acc[key].to(device) for key in ("features", "z", "logvar")}
        mi = mutual_information(model, on_device["features"], on_device["z"], on_device["logvar"], mi_batch_size)
    except TooFewExamples as err:
        return METRICS["mi"].entry(None, error=f"not computable: {err}")
    levels = "|hierarchical" if model.n_groups > 1 else ""
    return METRICS["mi"].entry(mi.value, stderr=bootstrap_stderr(mi.paired),
        signature=f"paired log q(z_i|x_i)-log q_agg(z_i)|M={mi.m}{levels}|n={n}|bootstrap SE",
        details={"he2019": mi.he2019.mean().item(), "he2019_stderr": bootstrap_stderr(mi.he2019),
                 "upper_bound_log_M": math.log(mi.m)})


def au_entries(means: torch.Tensor, noise: torch.Tensor, k: int) -> dict[str, dict]:
    _, G, p = means.shape
    out = {}
    for key, delta in AU_THRESHOLDS.items():
        try:
            active = active_units(means, delta, noise)
        except TooFewExamples as err:
            out[key] = METRICS[key].entry(None, error=f"not computable: {err}")
            continue
        out[key] = METRICS[key].entry(active.sum().item() / G,
            signature=f"delta={delta}|>=|E_q[z|x] over K={k} paths, path noise subtracted|mean count per group of {p}",
            details={"per_group": active.sum(1).tolist(), "total": int(active.sum()), "dims": G * p})
    return out


def representation_metrics(model, acc: dict, k: int, mi_batch_size: int | None) -> dict[str, dict]:
    n = acc["rec_nll"].shape[0]
    try:
        require_examples("iw", n)
    except TooFewExamples as err:
        return {key: spec.entry(None, error=f"not computable: {err}") for key, spec in METRICS.items()}
    G = model.n_groups
    out = ppl_metrics(acc, k, G, model.conditional)
    if G == 0:
        out.update({key: spec.entry(None, error=NO_LATENT) for key, spec in METRICS.items() if key not in out})
        return out
    rec = {"reconstruction_nll": acc["rec_nll"].mean().item()}
    for suffix, kl, over in (("", acc["kl"].sum(1), "sum"), ("_layer_mean", acc["kl"].mean(1), "mean")):
        out[f"neg_elbo{suffix}"] = METRICS[f"neg_elbo{suffix}"].entry((acc["rec_nll"] + kl).mean().item(),
            signature=f"K={k}|n={n}|KL {over} over {G} group(s)", details=rec)
        out[f"kl{suffix}"] = METRICS[f"kl{suffix}"].entry(kl.mean().item(),
            signature=f"analytic|{over} over {G} group(s)", details={"per_group": acc["kl"].mean(0).tolist()})
    out["mi"] = mi_entry(model, acc, mi_batch_size)
    out.update(au_entries(acc["mean"], acc["mean_noise"], k))
    return out


def probe_metrics(model, cfg, tokenizer, test_means: torch.Tensor, device, max_train: int = 2000) -> dict:
    """Linear probe: logistic regression from posterior means E_q[z|x] (train split, as many paths
    as the test means) to each known attribute, accuracy on the evaluated split, beside the
    majority-class baseline."""
    from sklearn.linear_model import LogisticRegression

    from della.data.corpus import read_attributes

    data = Path(cfg.data_dir)
    if model.n_groups == 0 or not (data / "train.attributes.jsonl").exists():
        return {}
    train_split = load_split(cfg, "train", tokenizer, max_train, model.backbone.n_positions)
    train_attrs = read_attributes(data / "train.attributes.jsonl")[:max_train]
    test_attrs = read_attributes(data / "test.attributes.jsonl")[: test_means.shape[0]]
    train_means = posterior_means(model, train_split, cfg.evaluate.iw_samples, cfg.evaluate.batch_size, device)
    x_train, x_test = train_means.flatten(1).numpy(), test_means.flatten(1).numpy()
    out = {}
    for attr in sorted(train_attrs[0]):
        y_train = np.array([a[attr] for a in train_attrs])
        y_test = np.array([a[attr] for a in test_attrs])
        clf = LogisticRegression(max_iter=2000).fit(x_train, y_train)
        values, counts = np.unique(y_train, return_counts=True)
        majority = float(np.mean(y_test == values[counts.argmax()]))
        out[f"probe_{attr}"] = MetricSpec(f"probe:{attr}", True, 3).entry(
            float(np.mean(clf.predict(x_test) == y_test)),
            signature=f"logreg|train n={len(y_train)}|E_q[z|x] over K={cfg.evaluate.iw_samples} paths",
            details={"majority_baseline": majority})
    return out


def evaluate(run_dir: Path, split: str, out_path: Path) -> dict:
    cfg, model, tokenizer, device = load_trained(run_dir)
    data = load_split(cfg, split, tokenizer, cfg.evaluate.max_lines, model.backbone.n_positions)
    start = time.perf_counter()
    with autocast(device, cfg.train.precision):
        acc = collect(model, data, cfg.evaluate.iw_samples, cfg.evaluate.batch_size, device, cfg.evaluate.iw_rows)
        metrics = representation_metrics(model, acc, cfg.evaluate.iw_samples, cfg.evaluate.mi_batch_size)
        if split == "test" and cfg.task == "lm":
            metrics.update(probe_metrics(model, cfg, tokenizer, acc["mean"], device))
    if data.truncated_lines:  # scored cut, with a </s> at the cut: the signature says so, and the table's footnote
        cut = (f"|{len(data.truncated_lines)} of {len(data.sequences)} examples cut to "
               f"train.max_length={cfg.train.max_length}")
        metrics = {key: {**entry, "signature": entry["signature"] + cut} for key, entry in metrics.items()}
    result = {"kind": "eval", "metrics": metrics, "split": split, "data": data.summary(),
              "config": cfg.to_dict(), "seed": cfg.seed, "precision": cfg.train.precision,
              "seconds": time.perf_counter() - start,
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
