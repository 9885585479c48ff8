"""Conditional tasks: JSONL source/target pairs, WP preprocessing, caps, the synthetic prompt task."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from della.data import synthetic
from della.data.conditional import Pair, encode_pairs, read_pairs, truncate_tokens, wp_preprocess
from della.data.prepare import add_arguments, run
from della.io import md5sum

SPLITS = ("train", "valid", "test")


def prepare(*argv: str) -> dict:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(list(argv))
    run(args)
    return json.loads((Path(args.out) / "prepare.json").read_text())


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def make_task(root: Path, train: list | None = None) -> Path:
    pairs = [{"source": f"prompt {i}", "target": f"story {i} <newline> goes on"} for i in range(4)]
    for split in SPLITS:
        write_jsonl(root / f"{split}.jsonl", train if split == "train" and train is not None else pairs)
    return root


@pytest.mark.parametrize("line, message", [
    ('{"target": "t"}', "missing field 'source'"),
    ('{"source": "s"}', "missing field 'target'"),
    ('{"source": "s", "target": "  "}', "empty target"),
    ('{"source": "", "target": "t"}', "empty source"),
    ('{"source": 3, "target": "t"}', "field 'source' must be a string, got int"),
    ('{"source": "s", "target": null}', "field 'target' must be a string, got NoneType"),
    ('["s", "t"]', "expected a JSON object"),
    ('{"source": "s", ', "not valid JSON"),
])
def test_bad_lines_are_named_by_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "train.jsonl", [{"source": "a", "target": "b"}, "", line])
    with pytest.raises(ValueError, match=f"train.jsonl:3: {message}"):
        read_pairs(path)


def test_pairs_are_read_stripped_with_their_line_numbers_and_blank_lines_skipped(tmp_path):
    lines = ['{"source": " s ", "target": "a\\nb", "id": 7}', "", '{"source": "t", "target": "u"}']
    path = write_jsonl(tmp_path / "x.jsonl", lines)
    assert read_pairs(path) == [Pair("s", "a\nb", 1), Pair("t", "u", 3)]
    with pytest.raises(FileNotFoundError, match="nope.jsonl: no such file"):
        read_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="no source/target pairs"):
        read_pairs(write_jsonl(tmp_path / "empty.jsonl", [""]))
    bom, latin1 = b'\xef\xbb\xbf{"source": "a", "target": "b"}\n', b'{"source": "caf\xe9", "target": "b"}\n'
    (tmp_path / "latin1.jsonl").write_bytes(bom + latin1)
    with pytest.raises(ValueError, match=r"latin1.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 16\)"):
        read_pairs(tmp_path / "latin1.jsonl")


def test_wp_preprocessing_turns_newline_tokens_into_breaks_and_keeps_pairs_under_700_words():
    kept = wp_preprocess(Pair("a <newline> b", "c<newline>d", 5))
    assert kept == Pair("a \n b", "c\nd", 5)
    assert wp_preprocess(Pair("w " * 300, "w " * 399, 1)) is not None  # 699 words
    assert wp_preprocess(Pair("w " * 300, "w " * 400, 1)) is None  # 700 words


def test_truncation_keeps_either_end_and_the_whitespace_between_kept_tokens():
    text = "one two\nthree  four five"
    assert truncate_tokens(text, 3, "right") == "one two\nthree"
    assert truncate_tokens(text, 3, "left") == "three  four five"
    assert truncate_tokens(text, 5, "right") == text
    assert truncate_tokens(text, None, "left") == text


def test_jsonl_source_writes_splits_and_records_preprocessing_and_caps(tmp_path):
    too_long = {"source": "s", "target": "w " * 700}
    train = [{"source": "a b c d", "target": "x <newline> y z"}, too_long, "", {"source": "e", "target": "f"},
             "  ", {"source": "g", "target": "h"}]
    src = make_task(tmp_path / "task", train=train)
    out = tmp_path / "out"
    report = prepare("--source", "jsonl", "--path", str(src), "--wp-preprocess", "--max-source-tokens", "2",
                     "--max-target-tokens", "2", "--truncation-side", "left", "--max-train-lines", "2",
                     "--out", str(out))
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert rows == [{"source": "c d", "target": "y z"}, {"source": "e", "target": "f"}]
    entry = report["splits"]["train"]
    assert (entry["pairs_read"], entry["wp_too_long_dropped"], entry["wp_too_long_lines"]) == (4, 1, [2])
    assert entry["blank_lines_skipped"] == 2
    assert (entry["sources_truncated"], entry["targets_truncated"], entry["capped_from"]) == (1, 1, 3)
    assert entry["pairs_written"] == 2 and entry["input"].endswith("task/train.jsonl")
    assert report["task"] == "conditional" and report["preprocessing"] == {"wp": True, "wp_max_pair_words": 700}
    assert report["caps"] == {"max_train_lines": 2, "max_eval_lines": None, "max_source_tokens": 2,
                              "max_target_tokens": 2, "truncation_side": "left", "token_unit": "whitespace"}
    valid = [json.loads(line) for line in (out / "valid.jsonl").read_text().splitlines()]
    assert valid[0] == {"source": "prompt 0", "target": "goes on"}  # the last 2 tokens of each side
    assert report["files"] == {f"{s}.jsonl": md5sum(out / f"{s}.jsonl") for s in SPLITS}


def test_newlines_in_targets_survive_the_round_trip(tmp_path):
    src = make_task(tmp_path / "task")
    prepare("--source", "jsonl", "--path", str(src), "--wp-preprocess", "--out", str(tmp_path / "out"))
    assert read_pairs(tmp_path / "out" / "test.jsonl")[0].target == "story 0 \n goes on"


def test_a_split_emptied_by_preprocessing_is_an_error_naming_its_file(tmp_path):
    src = make_task(tmp_path / "task", train=[{"source": "s", "target": "w " * 800}])
    with pytest.raises(ValueError, match="task/train.jsonl: split 'train' has no pair left"):
        prepare("--source", "jsonl", "--path", str(src), "--wp-preprocess", "--out", str(tmp_path / "out"))


@pytest.mark.parametrize("argv, message", [
    (["--source", "jsonl"], "--path: required for --source jsonl"),
    (["--source", "dir", "--path", "x", "--wp-preprocess"], "--wp-preprocess: only for --source jsonl"),
    (["--source", "synthetic", "--max-target-tokens", "5"], "--max-target-tokens: only for --source jsonl"),
    (["--source", "jsonl", "--path", "x", "--max-source-tokens", "0"], "--max-source-tokens: must be >= 1"),
    (["--source", "synthetic-conditional", "--path", "x"], "--path: not used by --source synthetic-conditional"),
    (["--source", "jsonl", "--path", "x", "--seed", "1"], "--seed: only for --source synthetic"),
])
def test_bad_conditional_arguments(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        prepare(*argv, "--out", str(tmp_path / "out"))


def test_synthetic_prompts_fix_attributes_that_the_target_realises():
    corpus = synthetic.generate_conditional_corpus({"train": 200, "valid": 20, "test": 20}, seed=3)
    targets = [ex.target for examples in corpus.values() for ex in examples]
    assert len(set(targets)) == len(targets) == 240
    for ex in corpus["train"]:
        attrs, fixed = ex.attributes, ex.attributes["fixed"]
        assert fixed and set(fixed) <= set(synthetic.ATTRIBUTES)
        assert ex.source == synthetic.prompt({name: attrs[name] for name in fixed})
        for name, words in synthetic.PROMPT_WORDS.items():
            assert (words[attrs[name]] in ex.source) == (name in fixed), (ex, name)
        lo, hi = synthetic.WORD_RANGE[attrs["length"]]
        assert lo <= len(ex.target.split()) <= hi
    assert synthetic.prompt({"length": "short", "sentiment": "neg", "topic": "food", "tense": "past"}) == \
        "Write a short negative sentence about food in the past tense."
    again = synthetic.generate_conditional_corpus({"train": 200, "valid": 20, "test": 20}, seed=3)
    assert again == corpus


def test_synthetic_conditional_source_writes_pairs_and_aligned_attributes(tmp_path):
    out = tmp_path / "out"
    report = prepare("--source", "synthetic-conditional", "--n-train", "30", "--n-valid", "5", "--n-test", "5",
                     "--seed", "2", "--out", str(out))
    pairs = read_pairs(out / "train.jsonl")
    attributes = [json.loads(line) for line in (out / "train.attributes.jsonl").read_text().splitlines()]
    expected = synthetic.generate_conditional_corpus({"train": 30, "valid": 5, "test": 5}, seed=2)["train"]
    assert [(p.source, p.target) for p in pairs] == [(e.source, e.target) for e in expected]
    assert attributes == [e.attributes for e in expected]
    assert report["seed"] == 2 and report["grammar"] == synthetic.describe() and "path" not in report


def test_real_conditional_subsets_prepare_cleanly(shared_data, tmp_path):
    expected = {"wp": (350, 50, 50), "cnndm": (243, 50, 50), "quora": (1000, 100, 100)}
    for name, sizes in expected.items():
        caps = ["--max-train-lines", "1000", "--max-eval-lines", "100"] if name == "quora" else ["--wp-preprocess"]
        report = prepare("--source", "jsonl", "--path", str(shared_data / name), *caps,
                         "--out", str(tmp_path / name))
        assert tuple(report["splits"][s]["pairs_written"] for s in SPLITS) == sizes, name
    assert any("\n" in p.target for p in read_pairs(tmp_path / "wp" / "train.jsonl"))


class WordTokenizer:
    """Whitespace words -> ids 3.. (0 pad, 1 <s>, 2 </s>), enough to check the sequence layout."""

    pad_id, bos_id, eos_id = 0, 1, 2

    def encode_batch(self, texts):
        return [[3 + (sum(map(ord, w)) % 40) for w in t.split()] for t in texts]


def test_decoder_only_sequences_are_source_eos_target_eos_and_cut_targets_are_counted():
    pairs = [Pair("a b", "c d e", 1), Pair("f", "g h i j k l m n", 4)]
    enc = encode_pairs(pairs, WordTokenizer(), max_length=8, path="x.jsonl")
    ids = WordTokenizer().encode_batch(["a b", "c d e", "f", "g h i j k l"])
    assert enc.sequences[0] == [*ids[0], 2, *ids[1], 2] and enc.target_starts == [3, 2]
    assert enc.sequences[1] == [*ids[2], 2, *ids[3][:5], 2] and enc.truncated_lines == [4]
    assert enc.sources == [[*ids[0], 2], [*ids[2], 2]]  # the condition is the prompt
    with pytest.raises(ValueError, match="x.jsonl:9: source of 6 tokens"):
        encode_pairs([Pair("a b c d e f", "g", 9)], WordTokenizer(), max_length=8, path="x.jsonl")


def test_bart_sequences_are_start_bos_target_eos_with_the_source_as_encoder_input():
    pairs = [Pair("a b", "c d e", 1), Pair("f g h", "i", 2)]
    enc = encode_pairs(pairs, WordTokenizer(), max_length=8, path="x.jsonl", layout="bart", max_source_length=5)
    ids = WordTokenizer().encode_batch(["a b", "c d e", "f g h", "i"])
    assert enc.sequences == [[2, 1, *ids[1], 2], [2, 1, *ids[3], 2]] and enc.target_starts == [2, 2]
    assert enc.sources == [[1, *ids[0], 2], [1, *ids[2], 2]]
    with pytest.raises(ValueError, match="x.jsonl:2: source of 5 tokens .* exceeds the encoder's 4 positions"):
        encode_pairs(pairs, WordTokenizer(), max_length=8, path="x.jsonl", layout="bart", max_source_length=4)


def test_source_tokens_never_enter_the_loss():
    import torch

    from della.batches import collate_batch
    from tests.conftest import tiny_model

    pairs = [Pair("a b c", "d e", 1), Pair("f", "g h", 2)]  # lengths 7 and 5 (padded to 7)
    enc = encode_pairs(pairs, WordTokenizer(), max_length=16, path="x")
    ids, mask, condition = collate_batch(enc, [0, 1], pad_id=0)
    assert model_free_loss_mask(mask, condition) == [[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 0, 0]]
    model = tiny_model("gpt2", conditional=True)
    z = model.sample_prior(2, condition=condition)
    with torch.no_grad():
        nll = model.token_nll(ids, mask, z, condition)
        logp = model.decode(ids, z)[0].log_softmax(-1)
    for b, (seq, start) in enumerate(zip(enc.sequences, enc.target_starts)):
        expected = -sum(logp[b, t - 1, seq[t]] for t in range(start, len(seq)))
        torch.testing.assert_close(nll[b], expected, atol=1e-5, rtol=0)


def model_free_loss_mask(mask, condition):
    from della.models.base import LatentModel

    return LatentModel.predicted_mask(mask, condition).int().tolist()


def _save_pairs(path: Path, splits: dict[str, list[tuple]]) -> Path:
    import datasets

    datasets.DatasetDict({name: datasets.Dataset.from_dict({"article": [s for s, _ in rows],
                                                            "highlights": [t for _, t in rows]})
                          for name, rows in splits.items()}).save_to_disk(str(path))
    return path


def test_hf_conditional_source_reads_the_named_fields(tmp_path):
    src = _save_pairs(tmp_path / "hf", {"train": [("art one", "sum one"), ("art two", "sum two")],
                                        "validation": [("v", "vs")], "test": [("t", "ts")]})
    report = prepare("--source", "hf-conditional", "--path", str(src), "--source-field", "article",
                     "--target-field", "highlights", "--out", str(tmp_path / "out"))
    assert [(p.source, p.target) for p in read_pairs(tmp_path / "out" / "train.jsonl")] == \
        [("art one", "sum one"), ("art two", "sum two")]
    assert report["fields"] == {"source": "article", "target": "highlights"} and report["task"] == "conditional"
    with pytest.raises(ValueError, match=r"split train: no --target-field 'target'"):
        prepare("--source", "hf-conditional", "--path", str(src), "--source-field", "article",
                "--out", str(tmp_path / "o2"))
    bad = _save_pairs(tmp_path / "bad", {"train": [("a", "b"), ("c", " ")], "validation": [("v", "w")],
                                         "test": [("t", "u")]})
    with pytest.raises(ValueError, match=r"split train row 2: empty target \(field 'highlights'\)"):
        prepare("--source", "hf-conditional", "--path", str(bad), "--source-field", "article",
                "--target-field", "highlights", "--out", str(tmp_path / "o3"))
    with pytest.raises(ValueError, match="--source-field/--target-field: only for --source hf-conditional"):
        prepare("--source", "jsonl", "--path", "x", "--source-field", "a", "--out", str(tmp_path / "o4"))


def test_preparing_into_a_used_directory_leaves_nothing_of_the_earlier_set(tmp_path):
    """A dataset that keeps its name but changes source or task: no earlier split, pairs or
    attributes stay beside the new set (Table 7, the tokenizer and the probe read them)."""
    out = tmp_path / "out"
    prepare("--source", "synthetic", "--n-train", "20", "--n-valid", "5", "--n-test", "5", "--out", str(out))
    assert (out / "test.attributes.jsonl").exists()
    prepare("--source", "jsonl", "--path", str(make_task(tmp_path / "src")), "--out", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["prepare.json", "test.jsonl", "train.jsonl", "valid.jsonl"]
    lines = tmp_path / "lines"
    lines.mkdir()
    for split in SPLITS:
        (lines / f"{split}.txt").write_text("a b\nc d\n")
    prepare("--source", "dir", "--path", str(lines), "--out", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["prepare.json", "test.txt", "train.txt", "valid.txt"]


def test_a_failed_preparation_leaves_the_earlier_set_whole(tmp_path):
    out = tmp_path / "out"
    prepare("--source", "jsonl", "--path", str(make_task(tmp_path / "src")), "--out", str(out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = make_task(tmp_path / "bad", train=[{"source": "a " * 900, "target": "b " * 900}])
    with pytest.raises(ValueError, match="no pair left"):
        prepare("--source", "jsonl", "--path", str(bad), "--wp-preprocess", "--out", str(out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
