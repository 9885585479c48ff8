"""`python -m della generate --run RUN_DIR --out samples.txt`: text from the prior.

z is drawn from the prior (DELLA: layer by layer, z_l ~ p(z_l | z_<l)), then decoded with a KV
cache by greedy search, beam search, or top-k / top-p sampling. Every sample starts from <s>.

A conditional run (a CVAE) writes one output per test pair, in test order: z ~ p(z | c) for that
pair's source, and the decoder continues its prompt (GPT-2: source + </s>; BART: </s> <s>, the
source entering through the encoder). The output is the continuation only; the official code
saves prompt + continuation (reference §7.2), which would score the source as generated text.
Prompts of one length decode together, so no prompt needs padding.

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

from della.batches import EncodedSplit, collate_batch
from della.config import GenerateConfig
from della.io import atomic_write_json, atomic_write_text
from della.models.base import Condition, LatentModel
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


def _next_scores(model, ids, z, cache, cfg: GenerateConfig, n_new: int, condition: Condition | None,
                 log_probs: bool = False):
    """The next token's logits (log-probabilities for beam search, as HF's beam search takes them)
    after the repetition penalty and, before min_new_tokens, the block on </s>."""
    logits, cache = model.decode(ids if cache is None else ids[:, -1:], z, cache=cache, use_cache=True,
                                 condition=condition)
    scores = logits[:, -1].float()
    scores = penalize_repeats(scores.log_softmax(-1) if log_probs else scores, ids, cfg.repetition_penalty)
    if n_new < cfg.min_new_tokens:
        scores[:, model.vocab.eos_id] = float("-inf")
    return scores, cache


def new_token_limit(model: LatentModel, prompt_length: int, cfg: GenerateConfig) -> int:
    """generate.max_new_tokens, or fewer where the prompt leaves less room in the positions."""
    return max(0, min(cfg.max_new_tokens, model.backbone.n_positions - prompt_length))


def bos_prompt(model: LatentModel, n: int) -> torch.Tensor:
    return torch.full((n, 1), model.vocab.bos_id, dtype=torch.long, device=model.device)


@torch.no_grad()
def sample_or_greedy(model: LatentModel, z: torch.Tensor, cfg: GenerateConfig, generator: torch.Generator | None,
                     prompt: torch.Tensor | None = None, condition: Condition | None = None) -> list[list[int]]:
    """Continuations (ids after the prompt, up to </s>) of prompt (n, P) given z (n, G, p); the
    default prompt is <s>."""
    n, eos = z.shape[0], model.vocab.eos_id
    ids = bos_prompt(model, n) if prompt is None else prompt
    P = ids.shape[1]
    done = torch.zeros(n, dtype=torch.bool, device=z.device)
    cache = None
    for step in range(new_token_limit(model, P, cfg)):
        logits, cache = _next_scores(model, ids, z, cache, cfg, step, condition)
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
    return [_strip(row, eos) for row in ids[:, P:].tolist()]


@torch.no_grad()
def beam_search(model: LatentModel, z: torch.Tensor, cfg: GenerateConfig, prompt: torch.Tensor | None = None,
                condition: Condition | None = None) -> list[list[int]]:
    """Hugging Face generate's beam search (transformers 5; length penalty 1, no early stopping, as
    the official code ran it). Per example num_beams running hypotheses; at each step the 2 x
    num_beams best continuations (summed log-probabilities, the repetition penalty and min_new_tokens'
    </s> block applied to the log-probabilities) give the next running beams, the best num_beams not
    ending in </s>, and the finished hypotheses: those among the best num_beams that end in </s>,
    or all of them at the length limit, scored by their summed log-probability over their new tokens
    (</s> included). The num_beams best finished are kept; an example stops once its best running
    beam, scored at the current length, cannot beat the worst of them. Returns each example's best."""
    n, nb, eos = z.shape[0], cfg.num_beams, model.vocab.eos_id
    prompt = bos_prompt(model, n) if prompt is None else prompt
    P = prompt.shape[1]
    beams_of = torch.arange(n, device=z.device).repeat_interleave(nb)  # beams of one example share its latent
    z, ids = z[beams_of], prompt[beams_of]
    condition = None if condition is None else condition.rows(beams_of)
    scores = torch.full((n, nb), float("-inf"), device=z.device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]  # (score, tokens), best first
    improvable = [True] * n
    cache, limit = None, new_token_limit(model, P, cfg)
    for step in range(limit):
        log_probs, cache = _next_scores(model, ids, z, cache, cfg, step, condition, log_probs=True)
        V = log_probs.shape[-1]
        top_scores, top = (scores.view(-1, 1) + log_probs).view(n, nb * V).topk(2 * nb, dim=1)
        beam, token = top // V, top % V
        ends = (token == eos) | (step == limit - 1)  # a stopping criterion: </s>, or the length limit
        for i in range(n):
            if not improvable[i]:
                continue
            for s, b, t, end in zip(top_scores[i, :nb].tolist(), beam[i, :nb].tolist(), token[i, :nb].tolist(),
                                    ends[i, :nb].tolist()):
                if end and s > float("-inf"):
                    tokens = ids[i * nb + b, P:].tolist() + ([] if t == eos else [t])
                    finished[i].append((s / (step + 1), tokens))
            finished[i] = sorted(finished[i], key=lambda c: -c[0])[:nb]
        running = top_scores.masked_fill(token == eos, float("-inf")).topk(nb, dim=1)
        scores = running.values
        rows = (beam.gather(1, running.indices) + torch.arange(n, device=z.device)[:, None] * nb).view(-1)
        ids = torch.cat([ids[rows], token.gather(1, running.indices).view(-1, 1)], 1)
        cache = [tuple(t.index_select(0, rows) for t in layer) for layer in cache]
        best_running = (scores[:, 0] / (step + 1)).tolist()
        worst = [f[-1][0] if len(f) == nb else float("-inf") for f in finished]
        improvable = [ok and best > w for ok, best, w in zip(improvable, best_running, worst)]
        if not any(improvable):
            break
    return [f[0][1] if f else [] for f in finished]


def _strip(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def decode_rows(model: LatentModel, z: torch.Tensor, cfg: GenerateConfig, generator, prompt: torch.Tensor,
                condition: Condition | None) -> list[list[int]]:
    if cfg.strategy == "beam" and cfg.num_beams == 1:  # one beam is greedy search, as in HF generate
        cfg = replace(cfg, strategy="greedy")
    if cfg.strategy == "beam":
        return beam_search(model, z, cfg, prompt, condition)
    return sample_or_greedy(model, z, cfg, generator, prompt, condition)


def check_strategy(cfg: GenerateConfig) -> None:
    if cfg.strategy not in ("sample", "greedy", "beam"):
        raise ValueError(f"generate.strategy = {cfg.strategy!r}; expected sample, greedy or beam")


def one_line(texts: list[str]) -> list[str]:
    return [" ".join(t.split()) for t in texts]  # one sample per line


def generate_texts(model: LatentModel, tokenizer, cfg: GenerateConfig, seed: int) -> list[str]:
    """cfg.n_samples texts from the prior, each from <s>."""
    check_strategy(cfg)
    generator = torch.Generator().manual_seed(seed)
    texts = []
    for start in tqdm(range(0, cfg.n_samples, cfg.batch_size), desc=f"generate ({cfg.strategy})", unit="batch"):
        n = min(cfg.batch_size, cfg.n_samples - start)
        z = model.sample_prior(n, generator=generator)
        rows = decode_rows(model, z, cfg, generator, None, None)
        texts += one_line(tokenizer.decode_batch(rows))
    return texts


def prompt_batches(split: EncodedSplit, batch_size: int) -> list[list[int]]:
    """Indices of the split's examples in batches whose prompts (sequence before the target) have one length."""
    by_length: dict[int, list[int]] = {}
    for i, start in enumerate(split.target_starts):
        by_length.setdefault(start, []).append(i)
    return [group[j: j + batch_size] for _, group in sorted(by_length.items()) for j in range(0, len(group), batch_size)]


def generate_continuations(model: LatentModel, tokenizer, split: EncodedSplit, cfg: GenerateConfig,
                           seed: int) -> list[str]:
    """One continuation per example of a conditional split, in split order: z ~ p(z | c)."""
    check_strategy(cfg)
    generator = torch.Generator().manual_seed(seed)
    texts: list[str] = [""] * len(split.sequences)
    for idx in tqdm(prompt_batches(split, cfg.batch_size), desc=f"generate ({cfg.strategy})", unit="batch"):
        _, _, condition = collate_batch(split, idx, model.vocab.pad_id, model.device)
        condition = model.encode_source(condition)  # the prior and the decoder share the source's encoder pass
        prompt = torch.tensor([split.sequences[i][: split.target_starts[i]] for i in idx], device=model.device)
        z = model.sample_prior(len(idx), generator=generator, condition=condition)
        rows = decode_rows(model, z, cfg, generator, prompt, condition)
        for i, text in zip(idx, one_line(tokenizer.decode_batch(rows))):
            texts[i] = text
    return texts


# flag -> GenerateConfig field; each flag overrides the run config's `generate` section
DECODING_FLAGS = {
    "--strategy": ("strategy", str, "sample | greedy | beam"),
    "--top-k": ("top_k", int, "sample: keep the k most likely tokens (0: all)"),
    "--top-p": ("top_p", float, "sample: keep the smallest set with this probability"),
    "--temperature": ("temperature", float, "sample: divide the logits by this"),
    "--num-beams": ("num_beams", int, "beam: hypotheses per sample"),
    "--repetition-penalty": ("repetition_penalty", float,
                             "CTRL's penalty on every token already in the sequence, the prompt included (1: off)"),
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
    record = {"kind": "samples", "settings": asdict(settings), "seed": seed}
    if cfg.task == "conditional":
        from della.train import load_split

        test = load_split(cfg, "test", tokenizer, positions=model.backbone.n_positions)
        texts = generate_continuations(model, tokenizer, test, settings, seed=seed)
        record.update(conditional={"inputs": test.path, "one_output_per": "test pair, in order",
                                   "output": "continuation only (the official code saves prompt + continuation)",
                                   "n_samples": "unused: one output per test pair"})
    else:
        texts = generate_texts(model, tokenizer, settings, seed=seed)
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), {**record, "n": len(texts), "empty": sum(1 for t in texts if not t),
                                                 "provenance": provenance(device)})
    atomic_write_text(out, "".join(t + "\n" for t in texts))
    log.info("wrote %d samples to %s", len(texts), out)
