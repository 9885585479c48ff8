"""The human-evaluation kit: blind sheets, their key, and the statistics of Table 3 (known answers)."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest

from della.cli import main as della_cli
from della.human_eval import fleiss_kappa, paired_p_value, read_sheet

MODELS = ("gpt2", "embed", "della")
N_SOURCES, N_ITEMS, ANNOTATORS = 12, 8, 3


def test_fleiss_kappa_of_a_small_example_computed_by_hand():
    # 4 subjects, 3 raters, categories {1, 2}: counts (3,0) (0,3) (2,1) (1,2)
    # P_i = 1, 1, 1/3, 1/3 -> P = 2/3; p_1 = p_2 = 6/12 -> P_e = 1/2; kappa = (2/3 - 1/2) / (1/2) = 1/3
    ratings = [[1, 1, 1], [2, 2, 2], [1, 1, 2], [1, 2, 2]]
    assert fleiss_kappa(ratings, range(1, 3)) == pytest.approx(1 / 3)
    assert fleiss_kappa(ratings, range(1, 6)) == pytest.approx(1 / 3)  # unused categories change nothing


def test_fleiss_kappa_is_one_for_identical_annotators_and_nan_without_variation():
    assert fleiss_kappa([[r] * 5 for r in (1, 3, 5, 2, 3)], range(1, 6)) == pytest.approx(1.0)
    assert math.isnan(fleiss_kappa([[4, 4], [4, 4]], range(1, 6)))
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[1, 2], [1]], range(1, 6))


def test_wilcoxon_p_values_known_answers():
    # 10 pairs, all differences positive and distinct: the exact two-sided p is 2 / 2^10
    x = [float(i) for i in range(1, 11)]
    assert paired_p_value([a + a for a in x], x) == pytest.approx(2 / 2 ** 10)
    assert paired_p_value(x, x) == 1.0
    assert paired_p_value(x, [a - 1 for a in x[:5]] + [a + 1 for a in x[5:]]) > 0.5


@pytest.fixture
def task(tmp_path) -> dict[str, Path]:
    sources = tmp_path / "test.jsonl"
    sources.write_text("".join(json.dumps({"source": f"prompt number {n}", "target": f"ref {n}"}) + "\n"
                               for n in range(1, N_SOURCES + 1)))
    outputs = {}
    for m, model in enumerate(MODELS):
        outputs[model] = tmp_path / f"out-{m}.txt"
        outputs[model].write_text("".join(f"text {m}.{n}\n" for n in range(1, N_SOURCES + 1)))
    return {"sources": sources, **outputs}


def make_sheets(task, root: Path, seed: int = 7) -> tuple[Path, Path]:
    out, key = root / "sheets", root / "private" / "key.json"
    della_cli(["human-eval", "make", "--sources", str(task["sources"]), "--task", "wp", "--n-items", str(N_ITEMS),
               "--annotators", str(ANNOTATORS), "--seed", str(seed), "--out", str(out), "--key", str(key),
               *[f"--output={m}={task[m]}" for m in MODELS]])
    return out, key


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sheets_are_blind_shuffled_per_annotator_and_reproducible(task, tmp_path):
    out, key_path = make_sheets(task, tmp_path / "a")
    key = json.loads(key_path.read_text())
    assert key["seed"] == 7 and key["models"] == list(MODELS) and len(key["items"]) == N_ITEMS * len(MODELS)
    assert len({i["source_line"] for i in key["items"].values()}) == N_ITEMS
    orders = []
    for a in range(1, ANNOTATORS + 1):
        text = (out / f"annotator-{a}.csv").read_text() + (out / f"annotator-{a}.html").read_text()
        assert not any(model in text for model in MODELS)
        rows = read_csv(out / f"annotator-{a}.csv")
        assert list(rows[0]) == ["item", "source", "output", "fluency", "coherence", "novelty"]
        assert all(r["fluency"] == "" for r in rows)
        for r in rows:  # each output sits beside its own source
            item = key["items"][r["item"]]
            m = MODELS.index(item["model"])
            line = item["source_line"]
            assert (r["source"], r["output"]) == (f"prompt number {line}", f"text {m}.{line}")
        orders.append([r["item"] for r in rows])
    assert all(sorted(o) == sorted(key["items"]) for o in orders) and len({tuple(o) for o in orders}) == ANNOTATORS
    again, _ = make_sheets(task, tmp_path / "b")
    assert (again / "annotator-2.csv").read_text() == (out / "annotator-2.csv").read_text()
    other, _ = make_sheets(task, tmp_path / "c", seed=8)
    assert (other / "annotator-2.csv").read_text() != (out / "annotator-2.csv").read_text()
    assert not any(p.name.startswith("key") for p in out.iterdir())


def rating(model: str, line: int, criterion: str) -> int:
    """DELLA clearly more fluent than embed and as fluent as gpt2; everyone equal on coherence."""
    base = {"fluency": {"gpt2": 3, "embed": 1, "della": 3}, "coherence": {"gpt2": 2, "embed": 2, "della": 2},
            "novelty": {"gpt2": 1, "embed": 2, "della": 4}}[criterion][model]
    return base + line % 2


def fill(out: Path, key: dict, filled: Path) -> None:
    filled.mkdir(parents=True)
    for a in range(1, ANNOTATORS + 1):
        rows = read_csv(out / f"annotator-{a}.csv")
        for r in rows:
            item = key["items"][r["item"]]
            for c in ("fluency", "coherence", "novelty"):
                r[c] = str(rating(item["model"], item["source_line"], c))
        with open(filled / f"annotator-{a}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def test_make_fill_score_round_trip_gives_the_known_table(task, tmp_path):
    out, key_path = make_sheets(task, tmp_path)
    key = json.loads(key_path.read_text())
    fill(out, key, tmp_path / "filled")
    tables = tmp_path / "tables"
    della_cli(["human-eval", "score", "--block", "WritingPrompts", str(key_path), str(tmp_path / "filled"),
               "--out-dir", str(tables), "--label", "embed=Embed (ours)"])
    rows = {(r["model"], r["criterion"]): r for r in read_csv(tables / "table3.csv")}
    lines = sorted({i["source_line"] for i in key["items"].values()})
    for model in MODELS:
        for c in ("fluency", "coherence", "novelty"):
            expected = statistics.fmean(rating(model, line, c) for line in lines)
            assert float(rows[model, c]["mean"]) == pytest.approx(expected, abs=1e-4)
            assert int(rows[model, c]["n_ratings"]) == N_ITEMS * ANNOTATORS
            assert float(rows[model, c]["fleiss_kappa"]) == pytest.approx(1.0)  # identical annotators
    assert rows["della", "fluency"]["p_value"] == ""
    assert float(rows["embed", "fluency"]["p_value"]) < 0.05  # DELLA clearly better
    assert float(rows["gpt2", "fluency"]["p_value"]) == 1.0  # identical ratings
    assert float(rows["gpt2", "coherence"]["p_value"]) == 1.0
    assert float(rows["gpt2", "novelty"]["p_value"]) < 0.05
    md = (tables / "table3.md").read_text()
    assert "**Dataset: WritingPrompts**" in md and "| DELLA | **" in md and "Fleiss' kappa 1.00" in md
    assert "| GPT-2 | " in md and "| Embed (ours) | " in md  # the paper's names; --label overrides
    assert "Wilcoxon signed-rank test of DELLA vs. the model" in md
    assert rows["embed", "fluency"]["label"] == "Embed (ours)"
    tex = (tables / "table3.tex").read_text()
    assert r"\begin{tabular}{lccc}" in tex and r"\textbf{" in tex and "Wilcoxon" in tex


def test_bad_sheets_and_arguments_name_the_file_and_line(task, tmp_path):
    out, key_path = make_sheets(task, tmp_path)
    key = json.loads(key_path.read_text())
    criteria = key["criteria"]
    fill(out, key, tmp_path / "filled")
    sheet = tmp_path / "filled" / "annotator-1.csv"
    rows = read_csv(sheet)
    assert read_sheet(sheet, key["items"], criteria)[rows[0]["item"]]["fluency"] in range(1, 6)
    text = sheet.read_text()
    lines = text.splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines[:2] + [lines[2].rsplit(",", 1)[0] + ",6"] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: novelty = '6'; expected an integer 1-5"):
        read_sheet(bad, key["items"], criteria)
    bad.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"bad.csv: 1 item\(s\) of the key not rated"):
        read_sheet(bad, key["items"], criteria)
    bad.write_text(text.replace(rows[0]["item"], "i99999", 1))
    with pytest.raises(ValueError, match=r"bad.csv:2: item 'i99999' is not in the key"):
        read_sheet(bad, key["items"], criteria)
    with pytest.raises(SystemExit):
        della_cli(["human-eval", "make", "--sources", str(task["sources"]), "--task", "wp", "--out", str(out),
                   "--key", str(out / "key.json"), f"--output=della={task['della']}", f"--output=gpt2={task['gpt2']}"])
    short = tmp_path / "short.txt"
    short.write_text("one\n")
    from della.human_eval import make

    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="short.txt: 1 outputs for 12 sources"):
        make(task["sources"], {"della": task["della"], "gpt2": short}, "wp", 4, 2, 0, fresh, tmp_path / "k.json")
    with pytest.raises(ValueError, match="must lie outside --out"):
        make(task["sources"], {"della": task["della"], "gpt2": task["gpt2"]}, "wp", 4, 2, 0, out, out / "k.json")
    with pytest.raises(ValueError, match=r"--n-items 0: expected 1 to 12"):
        make(task["sources"], {"della": task["della"], "gpt2": task["gpt2"]}, "wp", 0, 2, 0, fresh, tmp_path / "k.json")
    # a second draw into the same folder would leave sheets the new key cannot score
    with pytest.raises(ValueError, match=r"sheets: holds sheets of an earlier `make` \(annotator-1.csv"):
        make(task["sources"], {"della": task["della"], "gpt2": task["gpt2"]}, "wp", 4, 2, 1, out, tmp_path / "k.json")


def test_a_sheet_saved_by_excel_with_a_byte_order_mark_is_read(task, tmp_path):
    out, key_path = make_sheets(task, tmp_path)
    key = json.loads(key_path.read_text())
    fill(out, key, tmp_path / "filled")
    sheet = tmp_path / "filled" / "annotator-1.csv"
    plain = read_sheet(sheet, key["items"], key["criteria"])
    sheet.write_bytes(b"\xef\xbb\xbf" + sheet.read_bytes())  # Excel's "CSV UTF-8"
    assert read_sheet(sheet, key["items"], key["criteria"]) == plain


def test_score_names_a_missing_or_empty_sheets_directory(task, tmp_path):
    _, key_path = make_sheets(task, tmp_path)
    from della.human_eval import score

    with pytest.raises(ValueError, match=r"wp: .*nowhere: no such directory of filled sheets"):
        score([("wp", str(key_path), str(tmp_path / "nowhere"))], "della", tmp_path / "t", "table3")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"wp: need filled sheets of at least two annotators, got 0 \(none\)"):
        score([("wp", str(key_path), str(tmp_path / "empty"))], "della", tmp_path / "t", "table3")
