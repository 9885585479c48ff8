"""`python -m della tokenizer` and the `Tokenizer` the models use.

Two ways to get a tokenizer for a dataset:

- `--pretrained NAME_OR_DIR`: a Hugging Face tokenizer (GPT-2 BPE by hub name or a local
  directory, loaded with `transformers.AutoTokenizer`). As in the official DELLA code, `<s>` and
  `</s>` are added as BOS/EOS, and `<|endoftext|>` becomes the pad token if there is none.
- otherwise: a byte-level BPE trained with Hugging Face `tokenizers` on the dataset's train split
  (`--vocab-size`, special tokens `<pad>`, `<s>`, `</s>`; deterministic for a given file): the lines
  of train.txt, or for a conditional dataset (its prepare.json says `"task": "conditional"`) the
  source and the target of every pair of train.jsonl, since the models read both.

Either way the output directory holds `tokenizer.json` (+ the transformers files, so
`AutoTokenizer.from_pretrained(dir)` also works) and `tokenizer-info.json` (special ids, vocabulary
size, provenance). It is written to a temporary directory and renamed into place.
`load_tokenizer(dir)` reads it back with the `tokenizers` library alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from tokenizers import Tokenizer as _HFTokenizer

from della.data.conditional import read_pairs
from della.data.corpus import read_lines
from della.io import atomic_write_json, md5sum, read_json, replace_dir

log = logging.getLogger(__name__)

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
GPT2_PAD = "<|endoftext|>"
INFO_FILE = "tokenizer-info.json"
MIN_FREQUENCY = 2  # a merge must occur at least twice in the training texts


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the three special ids the models need.

    `encode` never adds special tokens: callers add `bos_id`/`eos_id`/`pad_id` themselves, and a
    special token's text inside an example ("<s>" as an HTML tag, "<|endoftext|>") is encoded as
    text, never as that id (a runtime setting of `tokenizers`, not stored in tokenizer.json).
    `decode` drops special tokens and strips surrounding whitespace.
    """

    def __init__(self, hf: _HFTokenizer, info: dict[str, Any]):
        hf.encode_special_tokens = True
        self._hf = hf
        self.info = dict(info)
        self.bos_id: int = self._id(info["bos_token"])
        self.eos_id: int = self._id(info["eos_token"])
        self.pad_id: int = self._id(info["pad_token"])
        self.vocab_size: int = hf.get_vocab_size(with_added_tokens=True)

    def _id(self, token: str) -> int:
        token_id = self._hf.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer: special token {token!r} is not in the vocabulary")
        return token_id

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._hf.decode(list(ids), skip_special_tokens=True).strip()

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        return [t.strip() for t in self._hf.decode_batch([list(ids) for ids in batch],
                                                         skip_special_tokens=True)]

    def save(self, out_dir: str | Path) -> None:
        """Write tokenizer.json, the transformers files and tokenizer-info.json, atomically."""
        out_dir = Path(out_dir)
        tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            self._save_files(tmp)
            replace_dir(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _save_files(self, d: Path) -> None:
        from transformers import PreTrainedTokenizerFast

        fast = PreTrainedTokenizerFast(tokenizer_object=self._hf, bos_token=self.info["bos_token"],
                                       eos_token=self.info["eos_token"], pad_token=self.info["pad_token"])
        fast.save_pretrained(str(d))  # tokenizer.json + tokenizer_config.json
        self._hf.save(str(d / "tokenizer.json"))  # ours, byte for byte (overwrites the copy)
        info = {**self.info, "vocab_size": self.vocab_size, "bos_id": self.bos_id,
                "eos_id": self.eos_id, "pad_id": self.pad_id}
        atomic_write_json(d / INFO_FILE, info)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load a tokenizer written by `python -m della tokenizer` (or `Tokenizer.save`)."""
    directory = Path(directory)
    info_path, tok_path = directory / INFO_FILE, directory / "tokenizer.json"
    for p in (info_path, tok_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file; run `python -m della tokenizer` first")
    return Tokenizer(_HFTokenizer.from_file(str(tok_path)), read_json(info_path))


def train_bpe(lines: Sequence[str], vocab_size: int) -> _HFTokenizer:
    """A byte-level BPE (GPT-2 style, with a prefix space) trained on `lines`."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 260 + 3:
        raise ValueError(f"--vocab-size: must be at least 263 (256 bytes + specials), got {vocab_size}")
    hf = _HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=MIN_FREQUENCY,
                                  special_tokens=[PAD, BOS, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(lines, trainer=trainer, length=len(lines))
    return hf


def training_texts(data_dir: str | Path) -> tuple[Path, list[str], list[str] | None]:
    """(file, texts, fields) a BPE is trained on: train.txt's lines (fields None), or the sources and
    targets of train.jsonl for a conditional dataset, as prepare-data records it in prepare.json."""
    data_dir = Path(data_dir)
    report = data_dir / "prepare.json"
    if report.is_file() and read_json(report).get("task") == "conditional":
        path = data_dir / "train.jsonl"
        return path, [text for pair in read_pairs(path) for text in (pair.source, pair.target)], ["source", "target"]
    path = data_dir / "train.txt"
    if not path.is_file() and (data_dir / "train.jsonl").is_file():
        raise FileNotFoundError(f"{path}: no such file, and {report} does not mark {data_dir} as a conditional "
                                "dataset: prepare it with `python -m della prepare-data --source jsonl`")
    return path, read_lines(path), None


def from_pretrained(name_or_dir: str) -> tuple[_HFTokenizer, dict[str, Any]]:
    """A transformers tokenizer with `<s>`/`</s>` added and a pad token (the DELLA recipe)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_dir)
    except (OSError, ValueError) as err:
        raise ValueError(f"--pretrained {name_or_dir}: cannot load the tokenizer "
                         f"(no network here: pass a local directory): {err}") from err
    if not tok.is_fast:
        raise ValueError(f"--pretrained {name_or_dir}: needs a fast (tokenizer.json) tokenizer")
    tok.add_special_tokens({"bos_token": BOS, "eos_token": EOS})
    if tok.pad_token is None:
        if GPT2_PAD in tok.get_vocab():
            tok.pad_token = GPT2_PAD
        else:
            tok.add_special_tokens({"pad_token": PAD})
    info = {"kind": "pretrained", "pretrained": name_or_dir,
            "bos_token": tok.bos_token, "eos_token": tok.eos_token, "pad_token": tok.pad_token}
    return tok.backend_tokenizer, info


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "train a byte-level BPE on a dataset, or adopt a pretrained tokenizer"
    p.add_argument("--data", required=True,
                   help="prepared dataset directory (reads train.txt, or train.jsonl of a conditional dataset)")
    p.add_argument("--pretrained", default=None, help="HF tokenizer name or local directory")
    p.add_argument("--vocab-size", type=int, default=1000, help="trained BPE: vocabulary size")
    p.add_argument("--out", required=True, help="output directory, e.g. results/tokenizers/<dataset>")


def run(args: argparse.Namespace) -> None:
    if args.pretrained:
        hf, info = from_pretrained(args.pretrained)
    else:
        train_file, texts, fields = training_texts(args.data)
        hf = train_bpe(texts, args.vocab_size)
        info = {"kind": "trained-bpe", "pretrained": None, "requested_vocab_size": args.vocab_size,
                "min_frequency": MIN_FREQUENCY, "train_file": str(train_file), "train_fields": fields,
                "train_md5": md5sum(train_file), "bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    import tokenizers

    info["tokenizers_version"] = tokenizers.__version__
    tok = Tokenizer(hf, info)
    tok.save(args.out)
    log.info("%s tokenizer, %d tokens (bos %d, eos %d, pad %d) -> %s", info["kind"], tok.vocab_size,
             tok.bos_id, tok.eos_id, tok.pad_id, args.out)
