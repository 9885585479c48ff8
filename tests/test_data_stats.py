"""Table 7 (`python -m della data-stats`) on tiny corpora whose counts are known by hand."""

from __future__ import annotations

import csv
import json

import pytest
from tokenizers import Regex, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import WordLevel

from della.cli import main as della_cli
from della.data.stats import DatasetStats, dataset_stats, paper_count, render_markdown
from della.data.tokenizer import Tokenizer, load_tokenizer

CORPUS = {  # 6 sentences; words 2+3+4 + 1 + 5+3 = 18; non-space characters 2+4+4 + 2 + 5+3 = 20
    "train": ["a b", "cc d e", "f g h i"],
    "valid": ["jj"],
    "test": ["k l m n o", "p q r"],
}
N_WORDS, N_CHARS = 18, 20


def write_corpus(directory, corpus=CORPUS):
    directory.mkdir(parents=True)
    for split, lines in corpus.items():
        (directory / f"{split}.txt").write_text("".join(line + "\n" for line in lines))
    return directory


def char_tokenizer(directory):
    """A tokenizer with one token per non-space character: its length is known by hand."""
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", "<unk>", *"abcdefghijklmnopqr"])}
    hf = HFTokenizer(WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                pre_tokenizers.Split(Regex("."), behavior="isolated")])
    Tokenizer(hf, {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}).save(directory)
    return directory


def test_counts_and_average_lengths_are_those_of_the_corpus(tmp_path):
    stats = dataset_stats(write_corpus(tmp_path / "tiny"), load_tokenizer(char_tokenizer(tmp_path / "tok")))
    assert stats.dataset == "tiny"
    assert stats.sentences == {"train": 3, "valid": 1, "test": 2}
    assert stats.avg_words == {"text": pytest.approx(N_WORDS / 6)}
    assert stats.avg_tokens == {"text": pytest.approx(N_CHARS / 6)}
    assert dataset_stats(tmp_path / "tiny").avg_tokens is None


@pytest.mark.parametrize("n, text", [(0, "0"), (999, "999"), (3370, "3k"), (3761, "3k"), (42068, "42k"),
                                     (15_620, "15k"), (272_600, "272k"), (99_600, "99k"), (287_113, "287k"),
                                     (1_250_000, "1.2M"), (1_299_999, "1.2M")])
def test_counts_are_rounded_as_in_the_paper(n, text):
    assert paper_count(n) == text


def test_cli_writes_the_table_in_every_format(tmp_path):
    big = {"train": [f"w{i % 7} x" for i in range(4200)], "valid": ["y"] * 10, "test": ["z z z"] * 10}
    dirs = [write_corpus(tmp_path / "tiny"), write_corpus(tmp_path / "ptb", big)]
    della_cli(["data-stats", "--data", *map(str, dirs), "--out-prefix", str(tmp_path / "out" / "table7")])
    with open(tmp_path / "out" / "table7.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["dataset"] for r in rows] == ["tiny", "ptb"]  # the CSV keeps the directory name
    assert (rows[1]["train"], rows[1]["valid"], rows[1]["test"]) == ("4200", "10", "10")
    assert float(rows[1]["avg_words"]) == pytest.approx((4200 * 2 + 10 + 30) / 4220)
    assert rows[0]["avg_bpe_tokens"] == ""
    md = (tmp_path / "out" / "table7.md").read_text()
    assert "| PTB | 4k | 10 | 10 | 2 |" in md and "BPE" not in md  # the paper's spelling, whole words
    tex = (tmp_path / "out" / "table7.tex").read_text()
    assert r"\# Train" in tex and r"Tiny & 3 & 1 & 2 & 3 \\" in tex
    assert "<td>4k</td>" in (tmp_path / "out" / "table7.html").read_text()


def test_cli_adds_the_bpe_column_with_one_tokenizer_per_dataset(tmp_path):
    data, tok = write_corpus(tmp_path / "tiny"), char_tokenizer(tmp_path / "tok")
    della_cli(["data-stats", "--data", str(data), "--tokenizer", str(tok), "--out-prefix", str(tmp_path / "t7")])
    assert "| Tiny | 3 | 1 | 2 | 3 | 3 |" in (tmp_path / "t7.md").read_text()  # 18 / 6 words, 20 / 6 tokens


def test_a_conditional_dataset_has_the_lengths_of_its_sources_and_targets(tmp_path):
    """Source words 2, 4, 6 and 8 (mean 5), target words 10 to 40 (mean 25): "S: 5 T: 25" as the paper prints."""
    data = tmp_path / "pairs"
    data.mkdir()
    pairs = {"train": [(2, 10), (4, 20)], "valid": [(6, 30)], "test": [(8, 40)]}
    for split, lengths in pairs.items():
        lines = [json.dumps({"source": " ".join("s" * s), "target": " ".join("t" * t)}) for s, t in lengths]
        (data / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
    della_cli(["data-stats", "--data", str(write_corpus(tmp_path / "tiny")), str(data),
               "--out-prefix", str(tmp_path / "t7")])
    md = (tmp_path / "t7.md").read_text()
    assert "| Tiny | 3 | 1 | 2 | 3 |" in md and "| Pairs | 2 | 1 | 1 | S: 5 T: 25 |" in md
    with open(tmp_path / "t7.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert (float(rows[1]["avg_words_source"]), float(rows[1]["avg_words_target"])) == (5.0, 25.0)
    assert rows[1]["avg_words"] == "" and float(rows[0]["avg_words"]) == pytest.approx(N_WORDS / 6)


def test_tokenizers_must_match_the_datasets_one_to_one(tmp_path, caplog):
    data = write_corpus(tmp_path / "tiny")
    with pytest.raises(SystemExit):
        della_cli(["data-stats", "--data", str(data), str(data), "--tokenizer", str(tmp_path),
                   "--out-prefix", str(tmp_path / "t7")])
    assert "--tokenizer: 1 directories for 2 --data" in caplog.text


def test_a_missing_split_names_the_file(tmp_path, caplog):
    data = write_corpus(tmp_path / "tiny")
    (data / "valid.txt").unlink()
    with pytest.raises(SystemExit):
        della_cli(["data-stats", "--data", str(data), "--out-prefix", str(tmp_path / "t7")])
    assert f"{data / 'valid.txt'}: no such file" in caplog.text


def test_rows_carry_the_papers_short_dataset_names():
    """Table 7 prints WP (Table 2's block title spells it out) and CNN/DM, with the S:/T: lengths."""
    wp = DatasetStats("wp", {"train": 272_600, "valid": 15_620, "test": 15_138}, {"source": 28.2, "target": 673.8}, None)
    cnndm = DatasetStats("cnndm", {"train": 287_113, "valid": 13_368, "test": 11_490}, {"source": 790, "target": 61}, None)
    md = render_markdown([wp, cnndm], with_tokens=False)
    assert "| WP | 272k | 15k | 15k | S: 28 T: 674 |" in md and "| CNN/DM | 287k | 13k | 11k | S: 790 T: 61 |" in md
