"""aggregate and table on hand-made eval.json / metrics.json fixtures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from della.cli import main
from della.tables import SUMMARY_COLUMNS, collect, read_summary, run_path_parts


def entry(value, higher_is_better, label, display_scale=1, decimals=2, signature=""):
    e = {"value": value, "higher_is_better": higher_is_better, "label": label,
         "display_scale": display_scale, "decimals": decimals, "signature": signature, "details": {}}
    if value is None:
        e["error"] = "not computable"
    return e


def write_run(root: Path, dataset: str, model: str, seed: int, kind: str, metrics: dict) -> Path:
    path = root / "results" / "runs" / dataset / model / f"seed{seed}" / f"{kind}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"kind": kind, "metrics": metrics, "other": "ignored"}))
    return path


# dataset -> model -> per-seed (ppl, kl, bleu); None = null value; "absent" = key not written
RESULTS = {
    "ptb": {
        "gpt2": [(100.0, None, 0.30)],
        "della": [(80.0, 12.0, 0.25)],
        "embed": [(90.0, 0.5, "absent")],
    },
    "yahoo": {
        "gpt2": [(60.0, None, 0.10), (62.0, None, 0.12)],
        "della": [(50.0, 20.0, 0.40), (54.0, 22.0, 0.44)],
        "embed": [(70.0, 1.0, 0.40), (70.0, 1.0, 0.44)],
    },
}


@pytest.fixture
def run_files(tmp_path) -> list[Path]:
    files = []
    for dataset, models in RESULTS.items():
        for model, seeds in models.items():
            for seed, (ppl, kl, bleu) in enumerate(seeds):
                files.append(write_run(tmp_path, dataset, model, seed, "eval", {
                    "iw_ppl": entry(ppl, False, "PPL", signature="iw=30|v1"),
                    "kl": entry(kl, True, "KL")}))
                metrics = {} if bleu == "absent" else {
                    "bleu": entry(bleu, True, "BLEU", display_scale=100, decimals=1,
                                  signature="bleu|n=4|tok=13a")}
                files.append(write_run(tmp_path, dataset, model, seed, "metrics", metrics))
    return files


@pytest.fixture
def tables(run_files, tmp_path) -> dict[str, str]:
    summary = tmp_path / "results" / "summary.csv"
    main(["aggregate", "--inputs", *map(str, run_files), "--out", str(summary)])
    prefix = tmp_path / "results" / "tables" / "table1"
    main(["table", "--summary", str(summary), "--table", "table1", "--models", "gpt2,embed,della",
          "--out-prefix", str(prefix)])
    return {ext: prefix.with_suffix(f".{ext}").read_text() for ext in ("tex", "csv", "md")}


def rows_of(md: str) -> dict[tuple[str, str], list[str]]:
    out = {}
    for line in md.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0], cells[1]] = cells[2:]
    return out


COLUMNS = ["iw_ppl", "neg_elbo", "kl", "mi", "au", "bleu", "cnd", "mauve", "self_bleu", "dist", "js"]


def cell(md: str, dataset: str, model: str, key: str) -> str:
    return rows_of(md)[dataset, model][COLUMNS.index(key)]


def test_summary_is_long_with_the_contract_columns(run_files, tmp_path):
    out = tmp_path / "summary.csv"
    main(["aggregate", "--inputs", *map(str, run_files), "--out", str(out)])
    with out.open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == SUMMARY_COLUMNS
    ppl = [r for r in rows if r["dataset"] == "yahoo" and r["model"] == "della" and r["metric"] == "iw_ppl"]
    assert [(r["seed"], float(r["value"]), r["higher_is_better"]) for r in ppl] == \
        [("0", 50.0, "false"), ("1", 54.0, "false")]
    kl_gpt2 = next(r for r in rows if r["model"] == "gpt2" and r["metric"] == "kl")
    assert kl_gpt2["value"] == ""
    bleu = next(r for r in rows if r["metric"] == "bleu")
    assert (bleu["label"], bleu["display_scale"], bleu["decimals"], bleu["signature"]) == \
        ("BLEU", "100", "1", "bleu|n=4|tok=13a")
    assert bleu["source"].endswith("metrics.json")
    assert len(read_summary(out)) == len(rows)


def test_bold_marks_the_best_per_dataset_using_the_direction_from_json(tables):
    md = tables["md"]
    assert cell(md, "ptb", "della", "iw_ppl") == "**80.00**"  # lower is better
    assert cell(md, "ptb", "gpt2", "iw_ppl") == "100.00"
    assert cell(md, "ptb", "della", "kl") == "**12.00**"  # higher is better
    assert cell(md, "ptb", "gpt2", "bleu") == "**30.0**"  # display_scale 100, 1 decimal
    assert cell(md, "yahoo", "della", "iw_ppl") == "**52.00 ± 2.83**"


def test_ties_at_display_precision_are_all_bold(tables):
    md = tables["md"]
    assert cell(md, "yahoo", "della", "bleu") == "**42.0 ± 2.8**"
    assert cell(md, "yahoo", "embed", "bleu") == "**42.0 ± 2.8**"
    assert cell(md, "yahoo", "gpt2", "bleu") == "11.0 ± 1.4"


def test_null_and_missing_metrics_show_a_dash(tables):
    md, tex = tables["md"], tables["tex"]
    assert cell(md, "ptb", "gpt2", "kl") == "–"  # value null
    assert cell(md, "ptb", "embed", "bleu") == "–"  # key absent from metrics.json
    assert cell(md, "ptb", "della", "mauve") == "–"  # metric in no file at all
    assert r"ptb & gpt2 & 100.00 & -- & -- &" in tex


def test_headers_arrows_order_and_footnotes(tables):
    md, tex = tables["md"], tables["tex"]
    header = md.splitlines()[0]
    assert header.startswith("| Dataset | Model | PPL ↓ (a) | neg_elbo | KL ↑ |")
    assert "BLEU ↑ (b)" in header
    assert [m for d, m in rows_of(md) if d == "ptb"] == ["gpt2", "embed", "della"]
    assert "- (a) PPL: iw=30|v1" in md and "- (b) BLEU: bleu|n=4|tok=13a" in md
    assert r"PPL$\downarrow$$^{a}$" in tex and r"KL$\uparrow$" in tex
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\multicolumn{5}{c}{Representation}" in tex
    assert r"\textbf{52.00$\pm$2.83}" in tex
    assert r"BLEU: bleu\textbar{}n=4\textbar{}tok=13a" in tex
    assert tex.count(r"\midrule") == 2  # header rule + one between the two dataset blocks


def test_table_csv_has_display_scale_numbers(tables):
    rows = {(r["dataset"], r["model"]): r for r in csv.DictReader(tables["csv"].splitlines())}
    yahoo = rows["yahoo", "della"]
    assert yahoo["seeds"] == "2" and float(yahoo["bleu"]) == pytest.approx(42.0)
    assert float(yahoo["iw_ppl_std"]) == pytest.approx(2.828, abs=1e-3)
    assert rows["ptb", "gpt2"]["kl"] == "" and rows["ptb", "gpt2"]["kl_n"] == "0"


def test_partial_seeds_are_marked(tmp_path):
    files = [write_run(tmp_path, "d", "m", 0, "eval", {"iw_ppl": entry(10.0, False, "PPL")}),
             write_run(tmp_path, "d", "m", 1, "eval", {"iw_ppl": entry(None, False, "PPL")})]
    summary = tmp_path / "s.csv"
    main(["aggregate", "--inputs", *map(str, files), "--out", str(summary)])
    main(["table", "--summary", str(summary), "--table", "table1", "--out-prefix", str(tmp_path / "t")])
    md = (tmp_path / "t.md").read_text()
    assert cell(md, "d", "m", "iw_ppl") == "10.00 †"
    assert "† mean over the seeds that have a value" in md


def test_latex_escapes_names(tmp_path):
    files = [write_run(tmp_path, "my_data", "della_official", 0, "eval",
                       {"iw_ppl": entry(10.0, False, "PPL_%")})]
    summary = tmp_path / "s.csv"
    main(["aggregate", "--inputs", *map(str, files), "--out", str(summary)])
    main(["table", "--summary", str(summary), "--table", "table1", "--out-prefix", str(tmp_path / "t")])
    tex = (tmp_path / "t.tex").read_text()
    assert r"my\_data & della\_official & 10.00" in tex and r"PPL\_\%$\downarrow$" in tex


def test_run_path_parts():
    assert run_path_parts(Path("results/runs/ptb/della/seed3/eval.json")) == ("ptb", "della", 3)
    with pytest.raises(ValueError, match="not a run file"):
        run_path_parts(Path("results/ptb/della/seed3/eval.json"))
    with pytest.raises(ValueError, match="not a run file"):
        run_path_parts(Path("results/runs/ptb/della/seedX/eval.json"))


@pytest.mark.parametrize("bad, message", [
    ({"kl": {"higher_is_better": True}}, r"metrics\.kl: expected an object with a 'value'"),
    ({"kl": {"value": "high", "higher_is_better": True}}, r"metrics\.kl\.value: expected a number or null"),
    ({"kl": {"value": 1.0}}, r"metrics\.kl\.higher_is_better: expected true or false"),
    ({"kl": {"value": 1.0, "higher_is_better": True, "decimals": -1}}, r"metrics\.kl\.decimals"),
])
def test_bad_entries_name_file_and_key(tmp_path, bad, message):
    path = write_run(tmp_path, "d", "m", 0, "eval", bad)
    with pytest.raises(ValueError, match=message):
        collect([path])


def test_duplicate_metric_across_files_is_an_error(tmp_path):
    a = write_run(tmp_path, "d", "m", 0, "eval", {"kl": entry(1.0, True, "KL")})
    b = write_run(tmp_path, "d", "m", 0, "metrics", {"kl": entry(2.0, True, "KL")})
    with pytest.raises(ValueError, match="metric 'kl' of d/m/seed0 is also in"):
        collect([a, b])


def test_conflicting_directions_are_an_error(tmp_path):
    files = [write_run(tmp_path, "d", "a", 0, "eval", {"kl": entry(1.0, True, "KL")}),
             write_run(tmp_path, "d", "b", 0, "eval", {"kl": entry(2.0, False, "KL")})]
    summary = tmp_path / "s.csv"
    main(["aggregate", "--inputs", *map(str, files), "--out", str(summary)])
    with pytest.raises(SystemExit):
        main(["table", "--summary", str(summary), "--table", "table1", "--out-prefix", str(tmp_path / "t")])
    assert not (tmp_path / "t.tex").exists()


def test_unknown_dataset_is_an_error(run_files, tmp_path):
    summary = tmp_path / "s.csv"
    main(["aggregate", "--inputs", *map(str, run_files), "--out", str(summary)])
    with pytest.raises(SystemExit) as info:
        main(["table", "--summary", str(summary), "--table", "table1", "--datasets", "ptb,wiki",
              "--out-prefix", str(tmp_path / "t")])
    assert info.value.code == 2


def test_file_without_metrics_contributes_nothing(tmp_path):
    path = tmp_path / "results" / "runs" / "d" / "m" / "seed0" / "samples.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"kind": "samples", "n": 10}))
    assert collect([path]) == []
