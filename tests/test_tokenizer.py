"""The tokenizer command and `load_tokenizer`: trained BPE and a pretrained (GPT-2 style) one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from della.cli import main
from della.data import synthetic
from della.io import write_lines
from della.data.tokenizer import load_tokenizer

SENTENCES = ["The coach praised the thrilling final.", "My sister will find the old town lovely."]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    corpus = synthetic.generate_corpus({"train": 800}, seed=0)
    write_lines(d / "train.txt", [ex.text for ex in corpus["train"]])
    return d


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "synthetic"
    main(["tokenizer", "--data", str(data_dir), "--vocab-size", "500", "--out", str(out)])
    return out


def test_trained_bpe_round_trip_and_special_ids(trained):
    tok = load_tokenizer(trained)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size <= 500
    for text in SENTENCES + ["Unseen wörds 🙂 still round-trip, byte-level!"]:
        ids = tok.encode(text)
        assert {tok.pad_id, tok.bos_id, tok.eos_id}.isdisjoint(ids)
        assert tok.decode(ids) == text
        assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id, tok.pad_id]) == text
    assert tok.encode_batch(SENTENCES) == [tok.encode(s) for s in SENTENCES]
    assert tok.decode_batch(tok.encode_batch(SENTENCES)) == SENTENCES
    assert all(0 <= i < tok.vocab_size for i in tok.encode(SENTENCES[0]))


@pytest.mark.parametrize("text", ["a </s> b", "the <s> tag", "x <pad> y"])
def test_a_special_tokens_text_inside_an_example_is_text(trained, text):
    """Web text holds "<s>" (a strike tag): it must not become a sentence start or end mid-example."""
    tok = load_tokenizer(trained)
    ids = tok.encode(text)
    assert {tok.pad_id, tok.bos_id, tok.eos_id}.isdisjoint(ids) and tok.decode(ids) == text
    assert tok.encode_batch([text]) == [ids]


def test_info_file_records_ids_and_provenance(trained):
    info = json.loads((trained / "tokenizer-info.json").read_text())
    tok = load_tokenizer(trained)
    assert info["kind"] == "trained-bpe"
    assert info["requested_vocab_size"] == 500
    assert (info["bos_id"], info["eos_id"], info["pad_id"], info["vocab_size"]) == \
        (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size)
    assert len(info["train_md5"]) == 32


def test_training_is_deterministic(data_dir, trained, tmp_path):
    main(["tokenizer", "--data", str(data_dir), "--vocab-size", "500", "--out", str(tmp_path / "again")])
    for name in ("tokenizer.json", "tokenizer-info.json"):
        a = (trained / name).read_text().replace(str(data_dir), "")
        assert a == (tmp_path / "again" / name).read_text().replace(str(data_dir), "")


def test_save_replaces_the_directory_atomically(trained, tmp_path):
    out = tmp_path / "copy"
    out.mkdir()
    (out / "stale.txt").write_text("left over from an old run")
    load_tokenizer(trained).save(out)
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer-info.json", "tokenizer.json",
                                                     "tokenizer_config.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert load_tokenizer(out).encode(SENTENCES[0]) == load_tokenizer(trained).encode(SENTENCES[0])


def test_saved_directory_also_loads_with_transformers(trained):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(trained))
    tok = load_tokenizer(trained)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert hf.encode(SENTENCES[0], add_special_tokens=False) == tok.encode(SENTENCES[0])


@pytest.fixture(scope="module")
def fake_gpt2(tmp_path_factory) -> Path:
    """A GPT-2-shaped tokenizer directory (byte-level BPE, <|endoftext|>, no pad) made locally."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(SENTENCES * 20, trainer=trainer)
    d = tmp_path_factory.mktemp("gpt2")
    GPT2TokenizerFast(tokenizer_object=hf, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                      unk_token="<|endoftext|>").save_pretrained(str(d))
    return d


def test_pretrained_adds_bos_eos_and_pads_with_endoftext(fake_gpt2, data_dir, tmp_path):
    out = tmp_path / "pre"
    main(["tokenizer", "--data", str(data_dir), "--pretrained", str(fake_gpt2), "--out", str(out)])
    tok = load_tokenizer(out)
    info = json.loads((out / "tokenizer-info.json").read_text())
    assert info["kind"] == "pretrained" and info["pretrained"] == str(fake_gpt2)
    assert (info["bos_token"], info["eos_token"], info["pad_token"]) == ("<s>", "</s>", "<|endoftext|>")
    assert tok.bos_id != tok.eos_id and tok.pad_id not in (tok.bos_id, tok.eos_id)
    assert tok.vocab_size == max(tok.bos_id, tok.eos_id) + 1  # two tokens appended to the vocabulary
    ids = tok.encode(SENTENCES[1])
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id]) == SENTENCES[1]
    assert tok.pad_id not in tok.encode("end <|endoftext|> of text")  # GPT-2's special token, as text


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer-info.json: no such file"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="train.txt: no such file"):
        import argparse

        from della.data.tokenizer import add_arguments, run

        p = argparse.ArgumentParser()
        add_arguments(p)
        run(p.parse_args(["--data", str(tmp_path), "--out", str(tmp_path / "t")]))
