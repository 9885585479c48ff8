"""aggregate and table on hand-made eval.json / metrics.json fixtures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import metrics.registry as metric_registry
from della.cli import main
from della.cost import COST_METRICS
from della.tables import (CONVENTION_REMARKS, NBSP, PAPER_ONLY, PAPER_TABLES, SUMMARY_COLUMNS, TABLES, collect, read_paper, read_summary,
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
        if cells[0]:  # not the row of group titles
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
    # Markdown: the group titles open the body, each over its group's first column
    assert md.splitlines()[2] == ("|  | *Representation Learning* |  |  |  |  | *Generation Quality* |  |  "
                                  "| *Generation Diversity* |  |  |")
    assert r"\multicolumn{5}{c}{Representation Learning}" in tex and r"\cmidrule(lr){2-6}" in tex
    assert r"\multicolumn{12}{l}{\textit{Dataset: Yahoo}} \\" in tex
    assert tex.count(r"\midrule") == 2  # header rule + one between the two dataset blocks


@pytest.mark.parametrize("table", ["table4", "table5"])
def test_tables_4_and_5_have_the_papers_columns_under_no_group_title(run_files, tmp_path, table):
    tables = render(tmp_path, run_files, "--models", "gpt2,embed,della", table=table)
    assert tables["md"].splitlines()[0].startswith("| Model | PPL ↓ (a) | neg_elbo | KL ↑ |")
    assert "Representation Learning" not in tables["tex"] and r"\cmidrule" not in tables["tex"]


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
    # a best missing seeds (its failed ones unknown) never wins, nor against a runner-up missing seeds
    ({"a": [(10.0, None), (None, None), (None, None)], "b": [(12.0, None), (12.5, None), (11.5, None)]}, False),
    ({"a": [(10.0, None), (10.1, None)], "b": [(20.0, None), (None, None)]}, False),
])
def test_bold_only_beyond_the_spread(tmp_path, values, bold):
    md = one_column(tmp_path, values)
    assert cell(md, "D", "a", "iw_ppl").startswith("**") is bold
    assert not any(cell(md, "D", m, "iw_ppl").startswith("**") for m in values if m != "a")


def test_single_seed_shows_its_standard_error_and_several_seeds_their_std(tmp_path):
    md = one_column(tmp_path, {"a": [(4.861, 0.0312)], "b": [(5.0, 0.5), (6.0, 0.01)], "c": [(-0.001, 0.002)]})
    assert cell(md, "D", "a", "iw_ppl") == "4.86 ± 0.03"
    assert cell(md, "D", "c", "iw_ppl").strip("*") == "0.00 ± 0.00"  # not "-0.00" (bold: the lowest)
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
            files.append(write_run(tmp_path, dataset, model, 0, "eval", {
                "iw_ppl": entry(ppl + 1, False, "PPL"), "iw_ppl_official": entry(ppl, False, "PPL (official)")}))
            files.append(write_run(tmp_path, dataset, model, 0, "metrics", {
                "js": entry(js, False, "JS", display_scale=100), "bleu": entry(0.2, True, "BLEU", display_scale=100)}))
    tables = render(tmp_path, files, "--models", "gpt2,della", "--label", "gpt2=GPT-2", "--label",
                    "della=DELLA (official code)", "--paper-model", "della=DELLA", "--paper",
                    "--convention", "official")
    md = tables["md"]
    assert md.startswith("| Model | PPL ↓")  # the paper's column name; a remark states the convention
    assert CONVENTION_REMARKS["official"] in md
    ptb = {(i, row[0]): dict(zip(COLUMNS, row[1:])) for i, row in enumerate(block_rows(md, "Dataset: PTB"))}
    assert [label for _, label in ptb] == ["GPT-2", "↳ *paper*", "DELLA (official code)", "↳ *paper*"]
    ptb = list(ptb.values())
    # Table 8, PTB: GPT-2 PPL 25.80, BLEU 27.91 and JS 0.30 (both printed in percent, as our columns)
    assert ptb[1]["iw_ppl"] == "25.80" and ptb[1]["bleu"] == "27.91"
    assert ptb[1]["js"] == "0.30" and ptb[1]["kl"] == "–"
    assert ptb[1]["cnd"] == "–" and PAPER_ONLY["cnd"] in md  # the paper's CND (1.12) is not our CND*
    assert ptb[1]["self_bleu"] == "41.55"  # a column none of our rows has: as printed
    assert ptb[3]["iw_ppl"] == "10.28"  # DELLA, better than ours, not bold
    assert ptb[2]["iw_ppl"] == "**20.00**"
    assert [m for t, m in blocks_of(md) if t == "Dataset: Synthetic"] == ["GPT-2", "DELLA (official code)"]
    assert "Dataset: Synthetic: the paper reports no numbers for this dataset." in md
    assert "Dataset: PTB: paper rows from Hu et al. (2022), Table 8, Dataset: PTB" in md
    assert r"\quad\textit{paper} & 25.80" in tables["tex"]


def test_table5_paper_rows_follow_each_entrys_paper_row(tmp_path):
    """Table 5's rows share labels ("+BOW" under each baseline): the workflow passes each entry's
    `paper_row` ("Embed +BOW"), so each variant gets its own published numbers."""
    files = [write_run(tmp_path, "yelp", model, 0, "eval", {"iw_ppl_official": entry(ppl, False, "PPL"),
                                                          "au": entry(3.0, True, "AU")})
             for model, ppl in (("embed", 21.0), ("embed-bow", 20.0), ("della-bow", 14.0))]
    md = render(tmp_path, files, "--models", "embed,embed-bow,della-bow", "--label", "embed=Embed",
                "--label", "embed-bow=+BOW", "--label", "della-bow=+BOW", "--paper-model", "embed-bow=Embed +BOW",
                "--paper-model", "della-bow=DELLA +BOW", "--paper", "--convention", "official", table="table5")["md"]
    rows = block_rows(md, "Dataset: Yelp")
    assert [r[0] for r in rows] == ["Embed", "↳ *paper*", "+BOW", "↳ *paper*", "+BOW", "↳ *paper*"]
    # Table 5: Embed 22.21 (AU 0), Embed +BOW 19.98 (AU 4), DELLA +BOW 13.98 (AU 8)
    assert [(r[1], r[5]) for r in rows[1::2]] == [("22.21", "0"), ("19.98", "4"), ("13.98", "8")]  # as printed
    assert "paper rows from Hu et al. (2022), Table 5, Dataset: Yelp" in md


@pytest.mark.parametrize("convention, shown", [("summed", ("20.00", "100.00", "48.00")),
                                                ("official", ("15.00", "60.00", "4.00"))])
def test_the_convention_picks_the_ppl_elbo_kl_keys_and_only_official_shows_the_papers(tmp_path, convention, shown):
    """`official` shows the layer-mean keys (the convention of the paper's printed numbers) under the
    paper's labels, with the paper's PPL, ELBO and KL beside them; `summed` leaves those out."""
    values = {"iw_ppl": 20.0, "iw_ppl_official": 15.0, "neg_elbo": 100.0, "neg_elbo_layer_mean": 60.0,
              "kl": 48.0, "kl_layer_mean": 4.0}
    labels = {"iw_ppl_official": "PPL (official)", "neg_elbo_layer_mean": "ELBO (layer-mean)",
              "kl_layer_mean": "KL (layer-mean)"}
    files = [write_run(tmp_path, "ptb", "della", 0, "eval", {
        key: entry(value, key.startswith("kl"), labels.get(key, key)) for key, value in values.items()})]
    md = render(tmp_path, files, "--paper", "--label", "della=DELLA", "--convention", convention)["md"]
    assert md.splitlines()[0].split(" | ")[1:4] == ["iw_ppl ↓", "neg_elbo ↓", "kl ↑"]
    assert CONVENTION_REMARKS[convention] in md
    ours, paper = block_rows(md, "Dataset: PTB")
    assert tuple(ours[1:4]) == shown
    printed = read_paper("table8")
    expected = tuple(f"{printed['PTB', 'DELLA', k].printed:.2f}" for k in ("iw_ppl", "neg_elbo", "kl"))
    assert tuple(paper[1:4]) == (expected if convention == "official" else ("–",) * 3)


def block_rows(md: str, title: str) -> list[list[str]]:
    """The rows (label, cells...) of one block, in order (paper rows share a label)."""
    rows, current = [], None
    for line in md.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().replace(NBSP, " ") for c in line.strip("|").split("|")]
        if cells[0].startswith("**Dataset: "):
            current = cells[0].strip("*")
        elif current == title and cells[0]:  # not the row of group titles
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
    t1, t8 = read_paper("table1"), read_paper("table8")
    # spot checks against the paper's text: Table 1 Yahoo DELLA, Table 8 SNLI Embed
    assert t1["Yahoo", "DELLA", "iw_ppl"].value == 11.49
    assert t1["Yahoo", "DELLA", "bleu"].value == pytest.approx(0.4467)
    assert t8["SNLI", "Embed", "au"].value == 20 and t8["SNLI", "Embed", "js"].value == pytest.approx(0.0044)
    assert ("Yelp", "GPT-2", "kl") not in t1  # "-" in the paper: absent, not zero


@pytest.mark.parametrize("name", sorted({n for names in PAPER_TABLES.values() for n in names}))
def test_a_paper_number_shows_as_printed_in_our_column(name):
    """Each published number's scale is its column's display scale, so a paper row prints what the paper
    printed and reads in our rows' units (a JS of 0.30 beside ours, not 30.00)."""
    from della.cost import COST_METRICS
    from della.evaluate import METRICS
    from metrics import registry
    for (dataset, model, key), v in read_paper(name).items():
        scale = (METRICS.get(key) or COST_METRICS.get(key) or registry.get(key)).display_scale
        assert v.value * scale == pytest.approx(v.printed), (name, dataset, model, key)


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


# Tables 2 and 9 (conditional generation): text metrics as the metric registry declares them, KL/AU as eval.json
def conditional_entry(key: str, value):
    if key in ("kl", "au"):
        return entry(value, True, key.upper())
    spec = metric_registry.get(key)
    return entry(value, spec.higher_is_better, spec.label, spec.display_scale, spec.decimals)


# dataset -> model -> metric -> stored value (None: null, as a model without a latent writes for KL/AU)
CONDITIONAL = {
    "wp": {
        "gpt2": {"bleu": 0.20, "rouge1": 0.25, "rouge2": 0.05, "rougeL": 0.12, "bertscore": 0.78,
                 "self_bleu": 0.50, "dist": 0.20, "js": 0.005, "kl": None, "au": None},
        "embed": {"bleu": 0.30, "rouge1": 0.30, "rouge2": 0.06, "rougeL": 0.14,  # no BERTScore
                  "self_bleu": 0.60, "dist": 0.15, "js": 0.007, "kl": 2.0, "au": 3},
        "della": {"bleu": 0.35, "rouge1": 0.29, "rouge2": 0.08, "rougeL": 0.16, "bertscore": 0.80,
                  "self_bleu": 0.45, "dist": 0.22, "js": 0.006, "kl": 20.0, "au": 8},
    },
    "cnndm": {
        "bart": {"bleu": 0.40, "rouge1": 0.41, "rouge2": 0.19, "rougeL": 0.29, "bertscore": 0.87,
                 "self_bleu": 0.30, "dist": 0.44, "js": 0.001, "kl": None, "au": None},
        "embed": {"bleu": 0.38, "rouge1": 0.40, "rouge2": 0.18, "rougeL": 0.28, "bertscore": 0.86,
                  "self_bleu": 0.31, "dist": 0.43, "js": 0.001, "kl": 0.01, "au": 0},
        "della": {"bleu": 0.42, "rouge1": 0.39, "rouge2": 0.20, "rougeL": 0.30, "bertscore": 0.88,
                  "self_bleu": 0.29, "dist": 0.45, "js": 0.0009, "kl": 0.9, "au": 1},
    },
    "quora": {
        "bart": {"bleu": 0.60, "rouge1": 0.61, "rouge2": 0.38, "rougeL": 0.58, "bertscore": 0.94, "kl": None},
        "memory": {"bleu": 0.59, "rouge1": 0.60, "rouge2": 0.37, "rougeL": 0.57, "bertscore": 0.93, "kl": 0.0},
        "della": {"bleu": 0.62, "rouge1": 0.62, "rouge2": 0.39, "rougeL": 0.59, "bertscore": 0.95, "kl": 3.5},
    },
}
LABELS = ["--label", "gpt2=GPT-2", "--label", "bart=BART-base", "--label", "embed=Embed",
          "--label", "memory=Memory", "--label", "della=DELLA"]


def conditional_files(root: Path, datasets: list[str]) -> list[Path]:
    files = []
    for dataset in datasets:
        for model, values in CONDITIONAL[dataset].items():
            split = {kind: {k: conditional_entry(k, v) for k, v in values.items() if (k in ("kl", "au")) == is_eval}
                     for kind, is_eval in (("eval", True), ("metrics", False))}
            files += [write_run(root, dataset, model, 0, kind, metrics) for kind, metrics in split.items()]
    return files


def keyed_rows(md: str, title: str, table: str) -> list[tuple[str, dict[str, str]]]:
    keys = [k for _, ks in TABLES[table] for k in ks]
    return [(row[0], dict(zip(keys, row[1:]))) for row in block_rows(md, title)]


def test_table2_has_the_papers_column_groups_rows_and_best(tmp_path):
    tables = render(tmp_path, conditional_files(tmp_path, ["wp", "cnndm"]), "--models", "gpt2,bart,embed,della",
                    *LABELS, table="table2")
    md, tex, page = tables["md"], tables["tex"], tables["html"]
    assert md.splitlines()[0] == ("| Model | BLEU ↑ | Rouge-1 ↑ | Rouge-2 ↑ | Rouge-L ↑ | BERTScore ↑ "
                                  "| SB ↓ | Dist ↑ | JS ↓ | KL ↑ | AU ↑ |")
    assert r"\multicolumn{5}{c}{Quality} & \multicolumn{3}{c}{Diversity} & \multicolumn{2}{c}{} \\" in tex
    assert r"\cmidrule(lr){2-6} \cmidrule(lr){7-9}" + "\n" in tex  # no rule under the untitled KL, AU
    assert '<th colspan="5">Quality</th><th colspan="3">Diversity</th><th colspan="2"></th>' in page
    wp = dict(keyed_rows(md, "Dataset: WritingPrompts", "table2"))  # the paper's title of `wp`
    assert list(wp) == ["GPT-2", "BART-base", "Embed", "DELLA"]
    assert wp["DELLA"]["bleu"] == "**35.00**" and wp["Embed"]["rouge1"] == "**30.00**"
    assert wp["DELLA"]["self_bleu"] == "**45.00**" and wp["GPT-2"]["js"] == "**0.50**"  # lower is better
    assert wp["DELLA"]["kl"] == "**20.00**" and wp["DELLA"]["au"] == "**8.00**"
    assert wp["Embed"]["bertscore"] == "–" and wp["GPT-2"]["kl"] == "–"  # absent key; null value
    assert set(wp["BART-base"].values()) == {"–"}  # no run of it on WP
    assert [label for label, _ in keyed_rows(md, "Dataset: CNN/DM", "table2")] == list(wp)


def test_table2_paper_rows_under_the_models_the_paper_reports(tmp_path):
    md = render(tmp_path, conditional_files(tmp_path, ["wp", "cnndm"]), "--models", "gpt2,bart,embed,della",
                *LABELS, "--paper", "--paper-dataset", "wp=WP", "--paper-dataset", "cnndm=CNN/DM",
                "--paper-model", "bart=Bart-base", table="table2")["md"]
    wp = keyed_rows(md, "Dataset: WritingPrompts", "table2")
    assert [label for label, _ in wp] == ["GPT-2", "↳ *paper*", "BART-base", "Embed", "↳ *paper*",
                                          "DELLA", "↳ *paper*"]
    gpt2, della = wp[1][1], wp[6][1]
    # Table 2, WritingPrompts: GPT-2 BLEU 27.89 and JS 0.51 (both printed in percent, as ours), KL "-"
    assert (gpt2["bleu"], gpt2["bertscore"], gpt2["js"], gpt2["kl"]) == ("27.89", "78.12", "0.51", "–")
    assert (della["rougeL"], della["au"]) == ("17.20", "8")  # as printed (AU 8), never bold
    assert della["kl"] == "–"  # the paper's KL (28.14) is a layer mean: shown under `--convention official`
    cnndm = keyed_rows(md, "Dataset: CNN/DM", "table2")
    assert [label for label, _ in cnndm][:3] == ["GPT-2", "BART-base", "↳ *paper*"]
    assert cnndm[2][1]["bleu"] == "48.74" and cnndm[2][1]["au"] == "–"
    assert "Dataset: CNN/DM: paper rows from Hu et al. (2022), Table 2, Dataset: CNN/DM" in md
    # the paper's model named by the row label alone (no --paper-model) counts too
    assert ("Dataset: WritingPrompts: paper rows from Hu et al. (2022), Table 2, Dataset: WritingPrompts, "
            "in this table's units "
            "(WP: the abbreviation of §5.1 for WritingPrompts).") in md


def test_table9_has_no_group_titles_and_the_papers_quora_rows(tmp_path):
    tables = render(tmp_path, conditional_files(tmp_path, ["quora"]), "--models", "bart,memory,della", *LABELS,
                    "--paper-model", "bart=Bart-base", "--paper", table="table9")
    md, tex, page = tables["md"], tables["tex"], tables["html"]
    assert md.splitlines()[0] == "| Model | BLEU ↑ | Rouge-1 ↑ | Rouge-2 ↑ | Rouge-L ↑ | BERTScore ↑ | KL ↑ |"
    assert r"\multicolumn{6}" not in tex and r"\cmidrule" not in tex
    assert r"\toprule" + "\n" + r"Model & BLEU$\uparrow$" in tex
    assert "<thead>\n<tr><th>Model</th>" in page and "colspan" not in page.split("</thead>")[0]
    quora = keyed_rows(md, "Dataset: Quora", "table9")  # `quora` matches the paper's Quora
    assert [label for label, _ in quora] == ["BART-base", "↳ *paper*", "Memory", "↳ *paper*", "DELLA",
                                             "↳ *paper*"]
    assert quora[4][1]["bleu"] == "**62.00**" and quora[0][1]["kl"] == "–"
    assert quora[1][1]["bleu"] == "64.34" and quora[1][1]["kl"] == "–"  # Bart-base: "-" in the paper
    assert quora[3][1]["rouge2"] == "39.18"  # printed "Mem"
    assert quora[5][1]["kl"] == "–" and quora[5][1]["bertscore"] == "94.84"  # KL: a layer mean (official)


# how Tables 2 and 9 head each of our columns, and its unit: printed = stored value x scale
PRINTED_COLUMNS = {"bleu": ("BLEU↑", 100), "rouge1": ("Rouge-1↑", 100), "rouge2": ("Rouge-2↑", 100),
                   "rougeL": ("Rouge-L↑", 100), "bertscore": ("BERTScore↑", 100), "self_bleu": ("SB↓", 100),
                   "dist": ("Dist↑", 100), "js": ("JS↓", 100), "kl": ("KL↑", 1), "au": ("AU↑", 1)}


@pytest.mark.parametrize("name, blocks, rows, cells", [
    ("table2", {"WP": "WritingPrompts", "CNN/DM": "CNN/DM"},
     {"WP": ["GPT-2", "Embed", "Memory", "Softmax", "DELLA"],
      "CNN/DM": ["Bart-base", "Embed", "Memory", "Softmax", "DELLA"]}, 2 * 5 * 10 - 4),  # "-": KL, AU of the plain
    ("table9", {"Quora": "Quora"}, {"Quora": ["Bart-base", "Embed", "Memory", "Softmax", "DELLA"]}, 5 * 6 - 1),
])
def test_conditional_paper_csvs_are_complete_and_consistent(name, blocks, rows, cells):
    values = read_paper(name)
    keys = [k for _, ks in TABLES[name] for k in ks]
    assert PAPER_TABLES[name] == [name] and len(values) == cells
    assert {k for _, _, k in values} == set(keys)
    for dataset, models in rows.items():
        assert list(dict.fromkeys(m for d, m, _ in values if d == dataset)) == models  # the paper's row order
    with open(Path(__file__).parents[1] / f"della/paper/{name}.csv", newline="") as f:
        for row in csv.DictReader(f):
            head, scale = PRINTED_COLUMNS[row["metric"]]
            printed_row = "Mem" if name == "table9" and row["model"] == "Memory" else row["model"]
            head = "Bertscore↑" if name == "table9" and row["metric"] == "bertscore" else head
            assert row["source"] == f"Table {name[5:]}, Dataset: {blocks[row['dataset']]}, row {printed_row}, " \
                                    f"column {head}"
            assert float(row["scale"]) == scale


def test_conditional_paper_numbers_spot_checked_against_the_paper_text():
    t2, t9 = read_paper("table2"), read_paper("table9")
    assert t2["WP", "DELLA", "kl"].value == 28.14 and t2["WP", "Embed", "au"].value == 3
    assert t2["WP", "Memory", "dist"].value == pytest.approx(0.1290)
    assert t2["CNN/DM", "Bart-base", "bertscore"].value == pytest.approx(0.8775)
    assert t2["CNN/DM", "Softmax", "js"].value == pytest.approx(0.0010) and t2["CNN/DM", "DELLA", "au"].value == 1
    assert ("WP", "GPT-2", "kl") not in t2 and ("CNN/DM", "Bart-base", "au") not in t2  # "-": absent
    assert t9["Quora", "Memory", "rouge2"].value == pytest.approx(0.3918)
    assert t9["Quora", "Softmax", "kl"].printed == 0.0 and ("Quora", "Bart-base", "kl") not in t9


def test_conditional_table_columns_are_keys_the_project_writes():
    from della.evaluate import METRICS as EVAL_METRICS  # imports torch: only here

    produced = set(metric_registry.result_keys()) | set(EVAL_METRICS)
    for name in ("table2", "table9"):
        assert {k for _, ks in TABLES[name] for k in ks} <= produced


def test_dataset_models_keep_only_the_rows_run_on_each_dataset(tmp_path):
    """GPT-2 rows on WP and BART rows on CNN/DM, as the paper's Table 2 lays them out; the order is --models'."""
    md = render(tmp_path, conditional_files(tmp_path, ["wp", "cnndm"]), "--models", "gpt2,bart,embed,della",
                *LABELS, "--dataset-models", "wp=della,gpt2,embed", "--dataset-models", "cnndm=bart,embed,della",
                table="table2")["md"]
    assert [label for label, _ in keyed_rows(md, "Dataset: WritingPrompts", "table2")] == ["GPT-2", "Embed", "DELLA"]
    assert [label for label, _ in keyed_rows(md, "Dataset: CNN/DM", "table2")] == ["BART-base", "Embed", "DELLA"]
    with pytest.raises(SystemExit):  # the CLI names the flag and exits 2
        render(tmp_path, conditional_files(tmp_path, ["wp"]), "--dataset-models", "wp", table="table2")
