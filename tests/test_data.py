"""prepare-data for local directories and Hugging Face datasets, and the corpus readers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from della.cli import main
from della.data.corpus import read_attributes, read_lines, scan_lines
from della.io import md5sum
from della.data.prepare import add_arguments, run

GOOD = {"train": "a b c\nd e f\ng h\n", "valid": "v one\nv two\n", "test": "t one\nt two\nt three\n"}


def make_dir(root: Path, **splits: str | bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, content in {**GOOD, **splits}.items():
        if content is None:
            continue
        data = content.encode("utf-8") if isinstance(content, str) else content
        (root / f"{split}.txt").write_bytes(data)
    return root


def prepare(*argv: str) -> None:
    """Run the prepare-data command in-process, raising its errors (no SystemExit)."""
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    run(parser.parse_args(list(argv)))


def test_dir_source_copies_clean_splits_and_reports(tmp_path):
    src = make_dir(tmp_path / "src")
    out = tmp_path / "out"
    prepare("--source", "dir", "--path", str(src), "--out", str(out))
    assert read_lines(out / "train.txt") == ["a b c", "d e f", "g h"]
    report = json.loads((out / "prepare.json").read_text())
    assert report["source"] == "dir"
    assert report["splits"]["test"]["lines_read"] == 3
    for name, digest in report["files"].items():
        assert md5sum(out / name) == digest
    assert sorted(p.name for p in out.iterdir()) == ["prepare.json", "test.txt", "train.txt", "valid.txt"]


def test_empty_lines_are_dropped_counted_and_located(tmp_path):
    src = make_dir(tmp_path / "src", train="one\n\n  \ntwo\r\n\nthree")
    out = tmp_path / "out"
    prepare("--source", "dir", "--path", str(src), "--out", str(out))
    assert (out / "train.txt").read_text() == "one\ntwo\nthree\n"
    train = json.loads((out / "prepare.json").read_text())["splits"]["train"]
    assert train["lines_read"] == 6
    assert train["empty_dropped"] == 3
    assert train["empty_line_numbers"] == [2, 3, 5]
    assert train["lines_written"] == 3


def test_non_utf8_names_file_and_line(tmp_path):
    src = make_dir(tmp_path / "src", valid=b"fine\nalso fine\nbad \xff byte\n")
    with pytest.raises(ValueError, match=r"valid\.txt:3: not valid UTF-8 \(byte 0xff at column 5\)"):
        prepare("--source", "dir", "--path", str(src), "--out", str(tmp_path / "out"))
    assert not (tmp_path / "out" / "prepare.json").exists()


def test_missing_split_is_an_error(tmp_path):
    src = make_dir(tmp_path / "src", test=None)
    with pytest.raises(FileNotFoundError, match=r"test\.txt: no such file"):
        prepare("--source", "dir", "--path", str(src), "--out", str(tmp_path / "out"))


def test_split_with_only_empty_lines_is_an_error(tmp_path):
    src = make_dir(tmp_path / "src", valid="\n \n\t\n")
    with pytest.raises(ValueError, match=r"valid\.txt: split 'valid' has no non-empty lines \(3 read, 3 empty\)"):
        prepare("--source", "dir", "--path", str(src), "--out", str(tmp_path / "out"))


def test_caps_keep_the_first_lines(tmp_path):
    src = make_dir(tmp_path / "src")
    out = tmp_path / "out"
    prepare("--source", "dir", "--path", str(src), "--max-train-lines", "2", "--max-eval-lines", "1",
            "--out", str(out))
    assert read_lines(out / "train.txt") == ["a b c", "d e f"]
    assert read_lines(out / "test.txt") == ["t one"]
    report = json.loads((out / "prepare.json").read_text())
    assert report["splits"]["train"]["capped_from"] == 3
    assert report["splits"]["valid"]["capped_from"] == 2
    assert report["caps"] == {"max_train_lines": 2, "max_eval_lines": 1}


def test_bom_crlf_and_stray_line_breaks_are_normalized(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes("\ufeffhello world\r\nsplit\u2028inside\r\n  padded  \n".encode("utf-8"))
    scan = scan_lines(path)
    assert scan.lines == ["hello world", "split inside", "padded"]
    assert scan.line_breaks_replaced == 1


def test_a_file_with_old_mac_line_ends_is_refused_not_read_as_one_example(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b"first line\rsecond line\rthird line\r")
    with pytest.raises(ValueError, match=r"x.txt: its lines end in \\r alone"):
        scan_lines(path)


def test_replaced_line_breaks_and_a_tab_column_are_warned_about(tmp_path, caplog):
    src = make_dir(tmp_path / "src", train="4\ta b c\n1\td e\nsplit\u2028here\n")
    with caplog.at_level(logging.WARNING):
        prepare("--source", "dir", "--path", str(src), "--out", str(tmp_path / "out"))
    assert "train.txt: 1 line break(s) inside lines" in caplog.text
    assert "train.txt: 2 of 3 lines hold a tab (a label column?)" in caplog.text
    assert read_lines(tmp_path / "out" / "train.txt")[0] == "4\ta b c"  # kept whole, as the warning says


@pytest.mark.parametrize("argv, message", [
    (["--source", "dir"], "--path: required"),
    (["--source", "synthetic", "--path", "x"], "--path: not used"),
    (["--source", "dir", "--path", "x", "--n-train", "5"], "--n-train: only for --source synthetic"),
    (["--source", "dir", "--path", "x", "--text-field", "t"], "only for --source hf"),
    (["--source", "synthetic", "--max-eval-lines", "0"], "--max-eval-lines: must be >= 1"),
])
def test_bad_arguments(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        prepare(*argv, "--out", str(tmp_path / "out"))


def test_cli_turns_errors_into_exit_code_2(tmp_path, caplog):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare-data", "--source", "dir", "--path", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "nope/train.txt: no such file" in caplog.text


def test_read_lines_and_attributes_validate(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no non-empty lines"):
        read_lines(tmp_path / "empty.txt")
    (tmp_path / "a.jsonl").write_text('{"topic": "food"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"a\.jsonl:2: expected a JSON object"):
        read_attributes(tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text('{"topic": "food"}\nnot json\n')
    with pytest.raises(ValueError, match=r"b\.jsonl:2: not a JSON object"):
        read_attributes(tmp_path / "b.jsonl")
    (tmp_path / "c.jsonl").write_text('{"topic": "food"}\n')
    with pytest.raises(ValueError, match="1 attribute records for 2 text lines"):
        read_attributes(tmp_path / "c.jsonl", n_lines=2)
    with pytest.raises(FileNotFoundError):
        read_attributes(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets, built on disk (the hub is unreachable here)


def _save_dataset_dict(path: Path, splits: dict[str, list], field: str = "sentence") -> Path:
    import datasets

    dd = datasets.DatasetDict({name: datasets.Dataset.from_dict({field: rows, "label": [0] * len(rows)})
                               for name, rows in splits.items()})
    dd.save_to_disk(str(path))
    return path


def test_hf_source_from_save_to_disk(tmp_path):
    src = _save_dataset_dict(tmp_path / "hf", {
        "train": ["first sentence", "", None, "second\nline"],
        "validation": ["valid sentence"],
        "test": ["test one", "test two"]})
    out = tmp_path / "out"
    prepare("--source", "hf", "--path", str(src), "--text-field", "sentence", "--out", str(out))
    assert read_lines(out / "train.txt") == ["first sentence", "second line"]
    assert read_lines(out / "valid.txt") == ["valid sentence"]
    report = json.loads((out / "prepare.json").read_text())
    assert report["text_field"] == "sentence"
    train = report["splits"]["train"]
    assert train["lines_read"] == 4 and train["empty_line_numbers"] == [2, 3]
    assert train["line_breaks_replaced"] == 1


def test_hf_source_errors_name_split_and_field(tmp_path):
    src = _save_dataset_dict(tmp_path / "nosplit", {"train": ["a"], "test": ["b"]})
    with pytest.raises(ValueError, match=r"no validation/valid/dev split; available: \['test', 'train'\]"):
        prepare("--source", "hf", "--path", str(src), "--text-field", "sentence", "--out", str(tmp_path / "o"))
    src = _save_dataset_dict(tmp_path / "nofield", {"train": ["a"], "valid": ["b"], "test": ["c"]})
    with pytest.raises(ValueError, match=r"no text field 'text' \(--text-field\)"):
        prepare("--source", "hf", "--path", str(src), "--out", str(tmp_path / "o"))
    src = _save_dataset_dict(tmp_path / "numbers", {"train": [1], "valid": [2], "test": [3]}, field="text")
    with pytest.raises(ValueError, match="split train row 1: field 'text' is int"):
        prepare("--source", "hf", "--path", str(src), "--out", str(tmp_path / "o"))


def test_hf_source_via_load_dataset_on_local_files(tmp_path):
    src = tmp_path / "jsonl"
    src.mkdir()
    for split, rows in {"train": ["x one", "x two"], "validation": ["v"], "test": ["t"]}.items():
        (src / f"{split}.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    out = tmp_path / "out"
    prepare("--source", "hf", "--path", str(src), "--out", str(out))
    assert read_lines(out / "train.txt") == ["x one", "x two"]


# ---------------------------------------------------------------------------------------------
# The real benchmark data beside the repository (skipped when ../shared is absent)


def test_ptb_subset(shared_data, tmp_path):
    out = tmp_path / "ptb"
    prepare("--source", "dir", "--path", str(shared_data / "ptb"), "--max-train-lines", "2000",
            "--max-eval-lines", "300", "--out", str(out))
    report = json.loads((out / "prepare.json").read_text())
    assert report["splits"]["train"]["lines_read"] == 42068
    assert report["splits"]["train"]["empty_dropped"] == 0
    assert [report["splits"][s]["lines_written"] for s in ("train", "valid", "test")] == [2000, 300, 300]
    lines = read_lines(out / "train.txt")
    assert all(line == line.strip() and line for line in lines)
    assert "<unk>" in " ".join(lines)
