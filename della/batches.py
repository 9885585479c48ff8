"""Token sequences and padded batches: every example is [<s>] + tokens + [</s>], right-padded.

A conditional split (a CVAE's source -> target pairs, della/data/conditional.py) also holds each
example's condition (the source as the condition encoder reads it) and the index of its first
target token; its batches carry them as a `Condition`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterator

import torch

log = logging.getLogger(__name__)


@dataclass
class EncodedSplit:
    path: str
    sequences: list[list[int]]  # the decoder sequences
    truncated_lines: list[int] = field(default_factory=list)  # 1-based line numbers
    sources: list[list[int]] | None = None  # conditional: the condition of each example
    target_starts: list[int] | None = None  # conditional: index of the first target token in its sequence

    @property
    def conditional(self) -> bool:
        return self.sources is not None

    @cached_property
    def longest(self) -> int:
        return max(map(len, self.sequences), default=0)

    @cached_property
    def longest_source(self) -> int:
        return max(map(len, self.sources or []), default=0)

    def summary(self) -> dict:
        return {"path": self.path, "examples": len(self.sequences), "truncated": len(self.truncated_lines),
                "truncated_lines_first": self.truncated_lines[:20],
                "tokens": sum(len(s) for s in self.sequences), "conditional": self.conditional}


def encode_split(lines: list[str], tokenizer, max_length: int, path: str) -> EncodedSplit:
    """Tokenize lines; sequences longer than max_length (with <s> and </s>) keep their first
    max_length - 1 tokens and </s>, and are counted rather than silently dropped."""
    if max_length < 3:
        raise ValueError(f"train.max_length = {max_length}: need room for <s>, one token and </s>")
    out = EncodedSplit(path=path, sequences=[])
    for lineno, ids in enumerate(tokenizer.encode_batch(lines), start=1):
        seq = [tokenizer.bos_id, *ids, tokenizer.eos_id]
        if len(seq) > max_length:
            seq = seq[: max_length - 1] + [tokenizer.eos_id]
            out.truncated_lines.append(lineno)
        out.sequences.append(seq)
    if out.truncated_lines:
        log.warning("%s: %d of %d lines truncated to %d tokens (first: line %d)", path,
                    len(out.truncated_lines), len(lines), max_length, out.truncated_lines[0])
    return out


def padded_length(longest: int, multiple: int, cap: int) -> int:
    """`longest` rounded up to a multiple (train.pad_to_multiple), never past `cap` >= longest: the
    split's longest example, so never past the positions the data was checked against."""
    return min(-(-longest // multiple) * multiple, cap)


def collate(seqs: list[list[int]], pad_id: int, device: torch.device | str = "cpu", length: int | None = None):
    """-> input_ids (B, T) long, mask (B, T) float (1 on real tokens); T = the longest of seqs,
    or `length` when given (more padding: a batch of a fixed shape)."""
    T = length or max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T))
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def collate_batch(split: EncodedSplit, idx: list[int], pad_id: int, device: torch.device | str = "cpu",
                  multiple: int = 1):
    """Examples idx of a split -> (input_ids, mask, Condition or None), on `device`. With
    multiple > 1 the lengths are padded up to a multiple of it (fewer distinct batch shapes, so fewer
    compiles and CUDA graphs; the pads are masked, so the same numbers up to rounding)."""
    from della.models.base import Condition

    def batch(seqs: list[list[int]], cap: int):
        picked = [seqs[i] for i in idx]
        return collate(picked, pad_id, device, padded_length(max(map(len, picked)), multiple, cap))

    ids, mask = batch(split.sequences, split.longest)
    if not split.conditional:
        return ids, mask, None
    source_ids, source_mask = batch(split.sources, split.longest_source)
    starts = torch.tensor([split.target_starts[i] for i in idx], device=device)
    return ids, mask, Condition(source_ids, source_mask, starts)


def shuffled_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """Index batches of a fixed permutation; the seed (run seed, epoch) makes resumes exact."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i: i + batch_size] for i in range(0, n, batch_size)]


def rank_batches(batches: list[list[int]], rank: int, world: int) -> list[tuple[list[int], float]]:
    """This process's part of each global batch and the weight of its mean loss. A batch splits into
    `world` contiguous parts whose sizes differ by at most one (a full batch: rank r's batch_size
    examples from r * batch_size); the weight n_r * world / n makes DDP's mean over the ranks the
    mean over the batch's examples. A last batch with fewer examples than processes is dropped: a
    rank cannot run on none, and each must join every gradient all-reduce."""
    out = []
    for batch in batches:
        if len(batch) < world:
            continue
        size, extra = divmod(len(batch), world)
        start = rank * size + min(rank, extra)
        part = batch[start: start + size + (rank < extra)]
        out.append((part, len(part) * world / len(batch)))
    return out


def length_sorted_batches(seqs: list[list[int]], batch_size: int) -> Iterator[list[int]]:
    """Index batches of similar lengths (less padding) for evaluation; order does not change sums."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for i in range(0, len(order), batch_size):
        yield order[i: i + batch_size]
