"""aggregate and table on hand-made eval.json / metrics.json fixtures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from della.cli import main
from della.cost import COST_METRICS
from della.tables import (NBSP, PAPER_TABLES, SUMMARY_COLUMNS, TABLES, collect, read_paper, read_summary,
                          run_path_parts)


def entry(value, higher_is_better, label, display_scale=1, decimals=2, signature="", stderr=None):
    e = {"value": value, "higher_is_better": higher_is_better, "label": label,
         "display_scale": display_scale, "decimals": decimals, "signature": signature, "details": {}}
    if stderr is not None:
        e["stderr"] = stderr
    if value is None:
        e["error"] = "not computable"
    return e


def write_run(root: Path, dataset: str, model: str, seed: int, kind: str, metrics: dict) -> Path:
    path = root / "results" / "runs" / dataset / model / f"seed{seed}" / f"{kind}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"kind": kind, "metrics": metrics, "other": "ignored"}))
    return path


def write_human(root: Path, dataset: str, metrics: dict) -> Path:
    path = root / "results" / "human" / dataset / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"kind": "metrics", "metrics": metrics}))
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


def render(tmp_path: Path, files: list[Path], *args: str, table: str = "table1") -> dict[str, str]:
    summary = tmp_path / "results" / "summary.csv"
    main(["aggregate", "--inputs", *map(str, files), "--out", str(summary)])
    prefix = tmp_path / "results" / "tables" / table
    main(["table", "--summary", str(summary), "--table", table, *args, "--out-prefix", str(prefix)])
    return {ext: Path(f"{prefix}.{ext}").read_text() for ext in ("tex", "compact.tex", "csv", "md", "html")}


@pytest.fixture
def tables(run_files, tmp_path) -> dict[str, str]:
    return render(tmp_path, run_files, "--models", "gpt2,embed,della")


def blocks_of(md: str) -> dict[tuple[str, str], list[str]]:
    """(block title, row label) -> cells of a Markdown table (non-breaking spaces read as spaces)."""
    out, title = {}, None
    for line in md.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().replace(NBSP, " ") for c in line.strip("|").split("|")]
        if cells[0].startswith("**Dataset: "):
            title = cells[0].strip("*")
            continue
        out[title, cells[0]] = cells[1:]
    return out


COLUMNS = [k for _, keys in TABLES["table1"] for k in keys]


def cell(md: str, title: str, row: str, key: str) -> str:
    return blocks_of(md)[f"Dataset: {title}", row][COLUMNS.index(key)]


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
    assert kl_gpt2["value"] == "" and kl_gpt2["stderr"] == ""
    bleu = next(r for r in rows if r["metric"] == "bleu")
    assert (bleu["label"], bleu["display_scale"], bleu["decimals"], bleu["signature"]) == \
        ("BLEU", "100", "1", "bleu|n=4|tok=13a")
    assert bleu["source"].endswith("metrics.json")
    assert len(read_summary(out)) == len(rows)


def test_paper_layout_a_block_per_dataset_with_the_paper_spelling_and_column_groups(tables):
    md, tex, page = tables["md"], tables["tex"], tables["html"]
    assert md.splitlines()[0].startswith("| Model | PPL ↓ (a) | neg_elbo | KL ↑ |")
    assert [t for t, _ in blocks_of(md)] == ["Dataset: PTB"] * 3 + ["Dataset: Yahoo"] * 3  # the paper's names
    assert [m for t, m in blocks_of(md) if t == "Dataset: PTB"] == ["gpt2", "embed", "della"]
    for group in ("Representation Learning", "Generation Quality", "Generation Diversity"):
        assert f"{{{group}}}" in tex and f">{group}</th>" in page
    assert r"\multicolumn{5}{c}{Representation Learning}" in tex and r"\cmidrule(lr){2-6}" in tex
    assert r"\multicolumn{12}{l}{\textit{Dataset: Yahoo}} \\" in tex
    assert tex.count(r"\midrule") == 2  # header rule + one between the two dataset blocks


def test_labels_name_the_rows(run_files, tmp_path):
    md = render(tmp_path, run_files, "--models", "gpt2,della", "--label", "gpt2=GPT-2",
                "--label", "della=DELLA (official code)")["md"]
    assert [m for t, m in blocks_of(md) if t == "Dataset: PTB"] == ["GPT-2", "DELLA (official code)"]
    assert f"| DELLA{NBSP}(official{NBSP}code) |" in md  # the name does not wrap


def test_bold_marks_a_distinguishable_best_using_the_direction_from_json(tables):
    md = tables["md"]
    assert cell(md, "PTB", "della", "iw_ppl") == "**80.00**"  # lower is better
    assert cell(md, "PTB", "gpt2", "iw_ppl") == "100.00"
    assert cell(md, "PTB", "della", "kl") == "**12.00**"  # higher is better
    assert cell(md, "PTB", "gpt2", "bleu") == "**30.0**"  # display_scale 100, 1 decimal
    # 52 ± 2.83 vs the runner-up 61 ± 1.41: the gap 9 exceeds 2.83 + 1.41
    assert cell(md, "Yahoo", "della", "iw_ppl") == "**52.00 ± 2.83**"


def test_ties_are_not_bold(tables):
    md = tables["md"]
    assert cell(md, "Yahoo", "della", "bleu") == "42.0 ± 2.8"
    assert cell(md, "Yahoo", "embed", "bleu") == "42.0 ± 2.8"
    assert cell(md, "Yahoo", "gpt2", "bleu") == "11.0 ± 1.4"


def one_column(tmp_path: Path, values: dict[str, list[tuple[float, float | None]]]) -> str:
    """Markdown of a table whose only metric is a lower-is-better PPL: model -> [(value, stderr)] per seed."""
    files = [write_run(tmp_path, "d", m, seed, "eval", {"iw_ppl": entry(v, False, "PPL", stderr=se)})
             for m, seeds in values.items() for seed, (v, se) in enumerate(seeds)]
    return render(tmp_path, files)["md"]


@pytest.mark.parametrize("values, bold", [
    # gap 2 vs spreads std(10, 12) = 1.414 + std(12.5, 13.5) = 0.707: within the spread
    ({"a": [(10.0, None), (12.0, None)], "b": [(12.5, None), (13.5, None)]}, False),
    # gap 3 > 1.414 + 0.707
    ({"a": [(10.0, None), (12.0, None)], "b": [(13.5, None), (14.5, None)]}, True),
    # one seed each: the standard errors are the spread (gap 1.5 <= 1.0 + 0.6; > 1.0 + 0.4)
    ({"a": [(10.0, 1.0)], "b": [(11.5, 0.6)]}, False),
    ({"a": [(10.0, 1.0)], "b": [(11.5, 0.4)]}, True),
    # one seed, no error: any gap shown at the table's precision counts
    ({"a": [(10.0, None)], "b": [(10.01, None)]}, True),
    ({"a": [(10.0, None)], "b": [(10.004, None)]}, False),  # equal at 2 decimals
    ({"a": [(3.0, None)], "b": [(3.0, None)], "c": [(3.0, None)]}, False),  # all equal
])
def test_bold_only_beyond_the_spread(tmp_path, values, bold):
    md = one_column(tmp_path, values)
    assert cell(md, "D", "a", "iw_ppl").startswith("**") is bold
    assert not any(cell(md, "D", m, "iw_ppl").startswith("**") for m in values if m != "a")


def test_single_seed_shows_its_standard_error_and_several_seeds_their_std(tmp_path):
    md = one_column(tmp_path, {"a": [(4.861, 0.0312)], "b": [(5.0, 0.5), (6.0, 0.01)]})
    assert cell(md, "D", "a", "iw_ppl") == "4.86 ± 0.03"
    assert cell(md, "D", "b", "iw_ppl") == "5.50 ± 0.71"  # std over seeds, not a seed's stderr
    assert f"4.86{NBSP}±{NBSP}0.03" in md  # does not wrap
    rows = {r["model"]: r for r in csv.DictReader((tmp_path / "results/tables/table1.csv").open())}
    assert float(rows["a"]["iw_ppl_se"]) == pytest.approx(0.0312) and rows["a"]["iw_ppl_std"] == ""
    assert rows["b"]["iw_ppl_se"] == "" and float(rows["b"]["iw_ppl_std"]) == pytest.approx(0.7071, abs=1e-4)


def test_human_reference_row_comes_first_and_never_bold(run_files, tmp_path):
    human = write_human(tmp_path, "ptb", {"bleu": entry(0.9, True, "BLEU", display_scale=100, decimals=1,
                                                        signature="bleu|n=4|tok=13a")})
    tables = render(tmp_path, [*run_files, human], "--models", "gpt2,embed,della")
    md = tables["md"]
    assert [m for t, m in blocks_of(md) if t == "Dataset: PTB"] == ["Human", "gpt2", "embed", "della"]
    assert cell(md, "PTB", "Human", "bleu") == "90.0"  # the highest, not bold
    assert cell(md, "PTB", "gpt2", "bleu") == "**30.0**"  # the best model still is
    assert cell(md, "PTB", "Human", "iw_ppl") == "–"
    assert ("Dataset: Yahoo", "Human") not in blocks_of(md)
    kinds = {(r["dataset"], r["label"]): r["kind"] for r in csv.DictReader(tables["csv"].splitlines())}
    assert kinds["ptb", "Human"] == "reference" and kinds["ptb", "gpt2"] == "model"


def test_a_reference_csv_renders_as_human_rows_per_dataset(tmp_path):
    """metrics/reference/human.csv's shape: one row per (dataset, metric); each dataset a block."""
    reference = tmp_path / "human.csv"
    reference.write_text("dataset,metric,value,label,higher_is_better,display_scale,decimals,signature\n"
                         "ptb,bleu,0.25,BLEU,True,100,2,b\nptb,js,0.003,JS,False,100,2,j\n"
                         "snli,bleu,0.5,BLEU,True,100,2,b\n")
    md = render(tmp_path, [reference], table="human_reference")["md"]
    assert blocks_of(md) == {("Dataset: PTB", "Human"): ["25.00", "–", "–", "–", "–", "0.30"],
                             ("Dataset: SNLI", "Human"): ["50.00", "–", "–", "–", "–", "–"]}
    assert all("**" not in line for line in md.splitlines() if line.startswith("| Human"))  # never bold
    reference.write_text(reference.read_text() + "yahoo,bleu,high,BLEU,True,100,2,b\n")
    with pytest.raises(ValueError, match=r"human.csv:5: not a reference row"):
        collect([reference])


def test_paper_rows_under_each_model_in_our_units_and_never_bold(tmp_path):
    files = []
    for dataset in ("ptb", "synthetic"):
        for model, ppl, js in (("gpt2", 30.0, 0.5), ("della", 20.0, 0.4)):
            files.append(write_run(tmp_path, dataset, model, 0, "eval", {"iw_ppl": entry(ppl, False, "PPL")}))
            files.append(write_run(tmp_path, dataset, model, 0, "metrics", {
                "js": entry(js, False, "JS", display_scale=100), "bleu": entry(0.2, True, "BLEU", display_scale=100)}))
    tables = render(tmp_path, files, "--models", "gpt2,della", "--label", "gpt2=GPT-2", "--label",
                    "della=DELLA (official code)", "--paper-model", "della=DELLA", "--paper")
    md = tables["md"]
    ptb = {(i, row[0]): dict(zip(COLUMNS, row[1:])) for i, row in enumerate(block_rows(md, "Dataset: PTB"))}
    assert [label for _, label in ptb] == ["GPT-2", "↳ *paper*", "DELLA (official code)", "↳ *paper*"]
    ptb = list(ptb.values())
    # Table 8, PTB: GPT-2 PPL 25.80, BLEU 27.91 (printed in percent), JS 0.30 (a fraction: 30.00 here)
    assert ptb[1]["iw_ppl"] == "25.80" and ptb[1]["bleu"] == "27.91"
    assert ptb[1]["js"] == "30.00" and ptb[1]["kl"] == "–"
    assert ptb[1]["self_bleu"] == "41.55"  # a column none of our rows has: as printed
    assert ptb[3]["iw_ppl"] == "10.28"  # DELLA, better than ours, not bold
    assert ptb[2]["iw_ppl"] == "**20.00**"
    assert [m for t, m in blocks_of(md) if t == "Dataset: Synthetic"] == ["GPT-2", "DELLA (official code)"]
    assert "Dataset: Synthetic: the paper reports no numbers for this dataset." in md
    assert "Dataset: PTB: paper rows from Hu et al. (2022), Table 8, Dataset: PTB" in md
    assert r"\quad\textit{paper} & 25.80" in tables["tex"]


def block_rows(md: str, title: str) -> list[list[str]]:
    """The rows (label, cells...) of one block, in order (paper rows share a label)."""
    rows, current = [], None
    for line in md.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().replace(NBSP, " ") for c in line.strip("|").split("|")]
        if cells[0].startswith("**Dataset: "):
            current = cells[0].strip("*")
        elif current == title:
            rows.append(cells)
    return rows


def test_paper_csvs_are_complete_and_consistent():
    keys = set(COLUMNS)
    for name in PAPER_TABLES["table1"]:
        values = read_paper(name)
        assert {k for _, _, k in values} == keys
        assert {m for _, m, _ in values} == {"GPT-2", "Optimus", "Embed", "Memory", "Softmax", "DELLA"}
        assert all(v.source.startswith(f"Table {name[5:]}, Dataset: {d}, row {m}, column ")
                   for (d, m, _), v in values.items())
    for name in PAPER_TABLES["table1"]:  # BLEU, Self-BLEU and Dist printed in percent, the rest as stored
        with open(Path(__file__).parents[1] / f"della/paper/{name}.csv", newline="") as f:
            scales = {(r["metric"], r["scale"]) for r in csv.DictReader(f)}
        assert len(scales) == len(keys)
        assert dict(scales) == {**dict.fromkeys(keys, "1"), "bleu": "100", "self_bleu": "100", "dist": "100"}
    t1, t8 = read_paper("table1"), read_paper("table8")
    # spot checks against the paper's text: Table 1 Yahoo DELLA, Table 8 SNLI Embed
    assert t1["Yahoo", "DELLA", "iw_ppl"].value == 11.49
    assert t1["Yahoo", "DELLA", "bleu"].value == pytest.approx(0.4467)
    assert t8["SNLI", "Embed", "au"].value == 20 and t8["SNLI", "Embed", "js"].value == 0.44
    assert ("Yelp", "GPT-2", "kl") not in t1  # "-" in the paper: absent, not zero


def test_compact_latex_has_one_legend_and_no_signatures(tables):
    full, compact = tables["tex"], tables["compact.tex"]
    assert r"BLEU: bleu\textbar{}n=4\textbar{}tok=13a" in full and r"PPL$\downarrow$$^{a}$" in full
    assert "bleu\\textbar{}" not in compact and "$^{a}$" not in compact and r"PPL$\downarrow$ &" in compact
    assert compact.count(r"\footnotesize") == 1 and "higher/lower is better" in compact


def test_null_and_missing_metrics_show_a_dash(tables):
    md, tex = tables["md"], tables["tex"]
    assert cell(md, "PTB", "gpt2", "kl") == "–"  # value null
    assert cell(md, "PTB", "embed", "bleu") == "–"  # key absent from metrics.json
    assert cell(md, "PTB", "della", "mauve") == "–"  # metric in no file at all
    assert r"gpt2 & 100.00 & -- & -- &" in tex


def test_headers_arrows_and_footnotes(tables):
    md, tex, page = tables["md"], tables["tex"], tables["html"]
    assert "BLEU ↑ (b)" in md.splitlines()[0]
    assert "- (a) PPL: iw=30|v1" in md and "- (b) BLEU: bleu|n=4|tok=13a" in md
    assert r"KL$\uparrow$" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"\textbf{52.00$\pm$2.83}" in tex
    assert "white-space:nowrap" in page and "<b>52.00 ± 2.83</b>" in page


def test_table_csv_has_display_scale_numbers(tables):
    rows = {(r["dataset"], r["model"]): r for r in csv.DictReader(tables["csv"].splitlines())}
    yahoo = rows["yahoo", "della"]
    assert yahoo["seeds"] == "2" and float(yahoo["bleu"]) == pytest.approx(42.0)
    assert float(yahoo["iw_ppl_std"]) == pytest.approx(2.828, abs=1e-3)
    assert rows["ptb", "gpt2"]["kl"] == "" and rows["ptb", "gpt2"]["kl_n"] == "0"


def test_cost_parameters_have_no_direction_so_no_arrow_and_no_bold(tmp_path):
    files = [write_run(tmp_path, "d", m, 0, "eval", {"parameters": COST_METRICS["parameters"].entry(n)})
             for m, n in (("small", 1.5e6), ("big", 2.25e6))]
    md = render(tmp_path, files, table="cost")["md"]
    assert "| Params (M) |" in md and cell_of(md, "small", "Params (M)") == "1.50"


def cell_of(md: str, row: str, head: str) -> str:
    lines = [line for line in md.splitlines() if line.startswith("|")]
    heads = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == row:
            return cells[heads.index(head)]
    raise KeyError(row)


def test_partial_seeds_are_marked(tmp_path):
    files = [write_run(tmp_path, "d", "m", 0, "eval", {"iw_ppl": entry(10.0, False, "PPL")}),
             write_run(tmp_path, "d", "m", 1, "eval", {"iw_ppl": entry(None, False, "PPL")})]
    md = render(tmp_path, files)["md"]
    assert cell(md, "D", "m", "iw_ppl") == "10.00 †"
    assert "† mean over the seeds that have a value" in md


def test_latex_escapes_names(tmp_path):
    files = [write_run(tmp_path, "my_data", "della_official", 0, "eval",
                       {"iw_ppl": entry(10.0, False, "PPL_%")})]
    tex = render(tmp_path, files)["tex"]
    assert r"\textit{Dataset: My\_data}" in tex and r"della\_official & 10.00" in tex
    assert r"PPL\_\%$\downarrow$" in tex


def test_run_path_parts():
    assert run_path_parts(Path("results/runs/ptb/della/seed3/eval.json")) == ("ptb", "della", 3)
    assert run_path_parts(Path("results/human/ptb/metrics.json")) == ("ptb", "human", 0)
    with pytest.raises(ValueError, match="not a run file"):
        run_path_parts(Path("results/ptb/della/seed3/eval.json"))
    with pytest.raises(ValueError, match="not a run file"):
        run_path_parts(Path("results/runs/ptb/della/seedX/eval.json"))


@pytest.mark.parametrize("bad, message", [
    ({"kl": {"higher_is_better": True}}, r"metrics\.kl: expected an object with a 'value'"),
    ({"kl": {"value": "high", "higher_is_better": True}}, r"metrics\.kl\.value: expected a number or null"),
    ({"kl": {"value": 1.0}}, r"metrics\.kl: no 'higher_is_better'"),
    ({"kl": {"value": 1.0, "higher_is_better": "yes"}}, r"metrics\.kl\.higher_is_better: expected true, false"),
    ({"kl": {"value": 1.0, "higher_is_better": True, "decimals": -1}}, r"metrics\.kl\.decimals"),
    ({"kl": {"value": 1.0, "higher_is_better": True, "stderr": -0.1}}, r"metrics\.kl\.stderr"),
    ({"kl": {"value": 1.0, "higher_is_better": True, "stderr": "0.1"}}, r"metrics\.kl\.stderr"),
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
    with pytest.raises(SystemExit):
        render(tmp_path, files)
    assert not (tmp_path / "results/tables/table1.tex").exists()


@pytest.mark.parametrize("args", [["--datasets", "ptb,wiki"], ["--paper", "--paper-dataset", "ptb=Wiki"],
                                  ["--label", "gpt2"]])
def test_bad_table_options_are_an_error(run_files, tmp_path, args):
    with pytest.raises(SystemExit) as info:
        render(tmp_path, run_files, *args)
    assert info.value.code == 2


def test_file_without_metrics_contributes_nothing(tmp_path):
    path = tmp_path / "results" / "runs" / "d" / "m" / "seed0" / "samples.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"kind": "samples", "n": 10}))
    assert collect([path]) == []
