"""`python -m della interpolate --run RUN_DIR --a "..." --b "..." --steps 10 --out interp.md`: Fig 3.

Each sentence is encoded to its posterior means on the *mean path*: every latent group at its
posterior mean given the groups below it at theirs, z_1 = μ_1(x), z_l = μ_l(x, z_<l) (the posterior
sampled with zero noise; for the single-latent models simply μ(x)). The latents are interpolated
linearly, all groups (DELLA: all layers) at once, z(t) = (1 − t)·z_a + t·z_b at `--steps` evenly spaced
t from 0 (sentence a) to 1 (sentence b), both included; the paper's τ (§5.9) is 1 − t. Each z(t) is
decoded greedily with the run's generate settings. Writes the Markdown table to --out and the same
as an HTML page beside it (.html).
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import logging
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch

from della.batches import collate, encode_split
from della.config import GenerateConfig
from della.generate import sample_or_greedy
from della.io import atomic_write_text
from della.models.base import LatentModel
from della.run import load_trained
from della.tables import html_document

log = logging.getLogger(__name__)


@contextmanager
def zero_noise():
    """torch.randn / torch.randn_like return zeros: a posterior sample is then its mean path."""
    with mock.patch.object(torch, "randn", lambda *size, generator=None, **kw: torch.zeros(*size, **kw)), \
         mock.patch.object(torch, "randn_like", torch.zeros_like):
        yield


@torch.no_grad()
def mean_path(model: LatentModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The posterior means along the mean path, (N, G, p)."""
    if model.n_groups == 0:
        raise ValueError(f"model {model.registry_name!r} has no latent variable to interpolate")
    with zero_noise():
        post = model.sample_posterior(model.encode(ids, mask), k=1)
    if not torch.equal(post.z, post.mean):  # the model draws its noise some other way
        raise RuntimeError(f"model {model.registry_name!r}: a zero-noise posterior sample is not its mean; "
                           f"its sample_posterior must draw noise with torch.randn or torch.randn_like")
    return post.z[0]


def interpolation_weights(steps: int) -> list[float]:
    if steps < 2:
        raise ValueError(f"--steps = {steps}: need at least 2 (the two sentences)")
    return [i / (steps - 1) for i in range(steps)]


def interpolate_latents(z_a: torch.Tensor, z_b: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """(G, p) x 2 -> (S, G, p), row i = (1 - t_i) z_a + t_i z_b."""
    t = torch.tensor(weights, dtype=z_a.dtype, device=z_a.device)[:, None, None]
    return (1 - t) * z_a + t * z_b


def sentence_means(model: LatentModel, sequences: list[list[int]]) -> list[torch.Tensor]:
    """Each sentence's latents on the mean path, (G, p), encoded alone: the official DELLA's pooling
    reads pads, so in a shared batch the other sentence's length would move this one's."""
    return [mean_path(model, *collate([seq], model.vocab.pad_id, model.device))[0] for seq in sequences]


def interpolate(model: LatentModel, tokenizer, a: str, b: str, steps: int, max_length: int,
                generate: GenerateConfig) -> tuple[list[float], list[str]]:
    """-> the weights t and the greedy text decoded at each."""
    weights = interpolation_weights(steps)
    split = encode_split([a, b], tokenizer, max_length, path="--a/--b")
    z_a, z_b = sentence_means(model, split.sequences)
    z = interpolate_latents(z_a, z_b, weights)
    rows = sample_or_greedy(model, z, dataclasses.replace(generate, strategy="greedy"), generator=None)
    return weights, [" ".join(t.split()) for t in tokenizer.decode_batch(rows)]


def render_markdown(a: str, b: str, weights: list[float], texts: list[str]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", r"\|")

    lines = ["| t | text |", "| --- | --- |", f"| a | *{cell(a)}* |"]
    lines += [f"| {t:.2f} | {cell(text)} |" for t, text in zip(weights, texts)]
    lines += [f"| b | *{cell(b)}* |", "", "t: the weight of sentence b in z(t) = (1 − t)·z_a + t·z_b "
              "(posterior means on the mean path); each row decoded greedily."]
    return "\n".join(lines) + "\n"


def render_html(a: str, b: str, weights: list[float], texts: list[str], title: str) -> str:
    rows = [("a", f"<i>{html.escape(a)}</i>")] + [(f"{t:.2f}", html.escape(text)) for t, text in zip(weights, texts)]
    rows.append(("b", f"<i>{html.escape(b)}</i>"))
    body = [f"<h1>{html.escape(title)}</h1>", "<table>", "<tr><th>t</th><th>text</th></tr>",
            *(f"<tr><td>{t}</td><td>{text}</td></tr>" for t, text in rows), "</table>",
            "<p>t: the weight of sentence b in z(t) = (1 − t)·z_a + t·z_b (posterior means on the mean path); "
            "each row decoded greedily.</p>"]
    style = "body{font-family:sans-serif}table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left}"
    return html_document(title, style, body)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.splitlines()[0]
    p.add_argument("--run", required=True, help="run directory of a trained latent model")
    p.add_argument("--a", help="the first sentence (t = 0)")
    p.add_argument("--b", help="the second sentence (t = 1)")
    p.add_argument("--pair-from", metavar="FILE", help="instead of --a/--b: the first two lines of FILE "
                   "(the workflow passes the test split)")
    p.add_argument("--steps", type=int, default=10, help="interpolation points, both sentences included")
    p.add_argument("--out", required=True, help="interp.md (interp.html is written beside it)")


def sentence_pair(args: argparse.Namespace) -> tuple[str, str]:
    if args.pair_from:
        from della.data.corpus import read_lines

        lines = read_lines(Path(args.pair_from))
        if len(lines) < 2:
            raise ValueError(f"{args.pair_from}: --pair-from needs at least two lines, found {len(lines)}")
        return lines[0], lines[1]
    if not (args.a and args.b):
        raise ValueError("interpolate needs --a and --b, or --pair-from FILE")
    return args.a, args.b


def run(args: argparse.Namespace) -> None:
    args.a, args.b = sentence_pair(args)
    cfg, model, tokenizer, _ = load_trained(args.run)
    weights, texts = interpolate(model, tokenizer, args.a, args.b, args.steps, cfg.train.max_length, cfg.generate)
    out = Path(args.out)
    title = f"Interpolation, {cfg.dataset} / {cfg.model} / seed {cfg.seed}"
    atomic_write_text(out.with_suffix(".html"), render_html(args.a, args.b, weights, texts, title))
    atomic_write_text(out, render_markdown(args.a, args.b, weights, texts))
    log.info("%d interpolation steps -> %s", len(texts), out)
