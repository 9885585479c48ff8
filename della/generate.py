"""`python -m della generate --run RUN_DIR --out samples.txt`: text from the prior.

z is drawn from the prior (DELLA: layer by layer, z_l ~ p(z_l | z_<l)), then decoded with a KV
cache by greedy search, beam search, or top-k / top-p sampling. Every sample starts from <s>.
The decoding settings are the run config's `generate` section, each overridable by a flag
(`--strategy`, `--top-k`, ..., `--seed`); the settings used and the seed are recorded in
samples.json beside the text.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from della.config import GenerateConfig
from della.io import atomic_write_json, atomic_write_text
from della.models import LatentModel
from della.provenance import provenance
from della.run import load_trained

log = logging.getLogger(__name__)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the top_k largest logits (0 = all), then the smallest set with probability >= top_p."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def penalize_repeats(logits: torch.Tensor, ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty on every token already in the sequence."""
    if penalty == 1.0:
        return logits
    seen = logits.gather(1, ids)
    return logits.scatter(1, ids, torch.where(seen > 0, seen / penalty, seen * penalty))


def _step_logits(model, ids, z, cache, cfg: GenerateConfig, n_new: int):
    logits, cache = model.decode(ids if cache is None else ids[:, -1:], z, cache=cache, use_cache=True)
    logits = penalize_repeats(logits[:, -1].float(), ids, cfg.repetition_penalty)
    if n_new < cfg.min_new_tokens:
        logits[:, model.vocab.eos_id] = float("-inf")
    return logits, cache


@torch.no_grad()
def sample_or_greedy(model: LatentModel, z: torch.Tensor, cfg: GenerateConfig,
                     generator: torch.Generator | None) -> list[list[int]]:
    n, eos = z.shape[0], model.vocab.eos_id
    ids = torch.full((n, 1), model.vocab.bos_id, dtype=torch.long, device=z.device)
    done = torch.zeros(n, dtype=torch.bool, device=z.device)
    cache = None
    for step in range(cfg.max_new_tokens):
        logits, cache = _step_logits(model, ids, z, cache, cfg, step)
        if cfg.strategy == "greedy":
            nxt = logits.argmax(-1)
        else:
            probs = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(z.device)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        ids = torch.cat([ids, nxt[:, None]], 1)
        done |= nxt == eos
        if done.all():
            break
    return [_strip(row, eos) for row in ids[:, 1:].tolist()]


@torch.no_grad()
def beam_search(model: LatentModel, z: torch.Tensor, cfg: GenerateConfig) -> list[list[int]]:
    """Per example, keep num_beams hypotheses; a hypothesis ending in </s> is finished with the
    score log p / length (length penalty 1); stop once every example has num_beams finished."""
    n, nb, eos = z.shape[0], cfg.num_beams, model.vocab.eos_id
    z = z.repeat_interleave(nb, 0)  # beams of one example share its latent
    ids = torch.full((n * nb, 1), model.vocab.bos_id, dtype=torch.long, device=z.device)
    scores = torch.full((n, nb), float("-inf"), device=z.device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
    cache = None
    for step in range(cfg.max_new_tokens):
        logits, cache = _step_logits(model, ids, z, cache, cfg, step)
        V = logits.shape[-1]
        total = (scores.view(-1, 1) + logits.log_softmax(-1)).view(n, nb * V)
        top_scores, top = total.topk(2 * nb, dim=1)  # enough candidates to keep nb alive
        beam, token = top // V, top % V
        keep_rows, keep_tokens, keep_scores = [], [], []
        for i in range(n):
            alive = 0
            for s, b, t in zip(top_scores[i].tolist(), beam[i].tolist(), token[i].tolist()):
                row = i * nb + b
                if t == eos:
                    if len(finished[i]) < nb and s > float("-inf"):
                        finished[i].append((s / (step + 1), ids[row, 1:].tolist()))
                    continue
                keep_rows.append(row), keep_tokens.append(t), keep_scores.append(s)
                alive += 1
                if alive == nb:
                    break
        rows = torch.tensor(keep_rows, device=z.device)
        ids = torch.cat([ids[rows], torch.tensor(keep_tokens, device=z.device)[:, None]], 1)
        scores = torch.tensor(keep_scores, device=z.device).view(n, nb)
        cache = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in cache]
        if all(len(f) >= nb for f in finished):
            break
    out = []
    for i in range(n):
        pool = finished[i] or [(scores[i, b].item() / ids.shape[1], ids[i * nb + b, 1:].tolist())
                               for b in range(nb)]
        out.append(max(pool, key=lambda c: c[0])[1])
    return out


def _strip(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def generate_texts(model: LatentModel, tokenizer, cfg: GenerateConfig, seed: int) -> list[str]:
    if cfg.strategy not in ("sample", "greedy", "beam"):
        raise ValueError(f"generate.strategy = {cfg.strategy!r}; expected sample, greedy or beam")
    generator = torch.Generator().manual_seed(seed)
    texts = []
    for start in tqdm(range(0, cfg.n_samples, cfg.batch_size), desc=f"generate ({cfg.strategy})", unit="batch"):
        n = min(cfg.batch_size, cfg.n_samples - start)
        z = model.sample_prior(n, generator=generator) if model.n_groups else torch.zeros(n, 0, 0)
        z = z.to(model.device)
        rows = beam_search(model, z, cfg) if cfg.strategy == "beam" else sample_or_greedy(model, z, cfg, generator)
        texts += [" ".join(t.split()) for t in tokenizer.decode_batch(rows)]  # one sample per line
    return texts


# flag -> GenerateConfig field; each flag overrides the run config's `generate` section
DECODING_FLAGS = {
    "--strategy": ("strategy", str, "sample | greedy | beam"),
    "--top-k": ("top_k", int, "sample: keep the k most likely tokens (0: all)"),
    "--top-p": ("top_p", float, "sample: keep the smallest set with this probability"),
    "--temperature": ("temperature", float, "sample: divide the logits by this"),
    "--num-beams": ("num_beams", int, "beam: hypotheses per sample"),
    "--repetition-penalty": ("repetition_penalty", float, "CTRL's penalty on tokens already generated (1: off)"),
    "--max-new-tokens": ("max_new_tokens", int, "tokens after <s>, </s> included"),
    "--min-new-tokens": ("min_new_tokens", int, "</s> is blocked before this many tokens"),
    "--n-samples": ("n_samples", int, "how many samples"),
    "--batch-size": ("batch_size", int, "samples decoded together"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory of a trained model")
    p.add_argument("--out", required=True, help="samples.txt (samples.json is written beside it)")
    decoding = p.add_argument_group("decoding (default: the run config's `generate` section)")
    for flag, (field, kind, help_text) in DECODING_FLAGS.items():
        decoding.add_argument(flag, dest=field, type=kind, default=None, help=help_text,
                              choices=("sample", "greedy", "beam") if field == "strategy" else None)
    decoding.add_argument("--seed", type=int, default=None, help="sampling seed (default: the run's seed)")


def decoding_settings(cfg: GenerateConfig, args: argparse.Namespace) -> GenerateConfig:
    """The run config's generate section with every flag given on the command line applied."""
    fields = [field for field, _, _ in DECODING_FLAGS.values()]
    given = {field: getattr(args, field) for field in fields if getattr(args, field) is not None}
    return replace(cfg, **given)


def run(args: argparse.Namespace) -> None:
    cfg, model, tokenizer, device = load_trained(args.run)
    settings = decoding_settings(cfg.generate, args)
    seed = cfg.seed if args.seed is None else args.seed
    texts = generate_texts(model, tokenizer, settings, seed=seed)
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), {"kind": "samples", "settings": asdict(settings),
                                                 "seed": seed, "n": len(texts),
                                                 "empty": sum(1 for t in texts if not t),
                                                 "provenance": provenance(device)})
    atomic_write_text(out, "".join(t + "\n" for t in texts))
    log.info("wrote %d samples to %s", len(texts), out)
