"""The cost table, the report's figures and pages, and the Snakemake report itself.

Fast tests use hand-made run.json / benchmark / train-log / samples fixtures; `check_report(workdir)`
builds `snakemake --report` in a workdir where the default DAG has run (called by tests/test_e2e.py).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import re
from pathlib import Path

import pytest
import yaml

from della.cli import main
from della.cost import COST_METRICS, device_text
from della.report import plot_learning_curves, read_train_log, save_figure
from della.tables import collect
from tests.conftest import REPO, snakemake

CPU = {"type": "cpu", "torch_threads": 1, "host": "h", "machine": "x86_64", "cpu": "x86_64"}
H100 = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "torch_threads": 4, "host": "g", "machine": "x86_64"}

# model -> per seed: (device, world size, train_seconds, tokens/s, cuda MB, benchmark s, benchmark max_rss)
RUNS = {
    "gpt2": [(CPU, 1, 6.0, 1000.0, None, 10.0, 400.0), (CPU, 1, 8.0, 1100.0, None, 12.0, 420.0)],
    "della": [(H100, 2, 3.0, 5000.0, 900.0, 20.0, "NA"), (H100, 2, 3.0, 5000.0, 1000.0, None, None)],
}
PARAMS = {"gpt2": 1_500_000, "della": 2_250_000}


def write_cost_fixtures(root: Path) -> list[Path]:
    """run.json per run and a benchmark record for every run but della seed 1."""
    files = []
    for model, seeds in RUNS.items():
        for seed, (device, world, secs, tps, cuda, wall, rss) in enumerate(seeds):
            run = root / "results" / "runs" / "d" / model / f"seed{seed}" / "run.json"
            run.parent.mkdir(parents=True)
            cost = {"train_seconds": secs, "tokens_per_second": tps, "tokens_seen": 1, "max_rss_mb": 300.0}
            if cuda is not None:
                cost["cuda_max_allocated_mb"] = cuda
            run.write_text(json.dumps({
                "kind": "run", "seed": seed, "parameters": PARAMS[model], "cost": cost, "steps": 10,
                "config": {"model": model}, "provenance": {"git_commit": f"abc{seed}", "device": device,
                                                           "world_size": world, "versions": {"torch": "2.13"}}}))
            files.append(run)
            if wall is not None:
                bench = root / "results" / "benchmarks" / "train" / "d" / model / f"seed{seed}.jsonl"
                bench.parent.mkdir(parents=True, exist_ok=True)
                bench.write_text(json.dumps({"s": wall, "h:m:s": "0:00:10", "max_rss": rss, "cpu_time": 1.0}) + "\n")
                files.append(bench)
    return files


@pytest.fixture
def cost_tables(tmp_path) -> dict[str, str]:
    summary = tmp_path / "results" / "cost.csv"
    main(["aggregate", "--inputs", *map(str, write_cost_fixtures(tmp_path)), "--out", str(summary)])
    prefix = tmp_path / "results" / "tables" / "cost"
    main(["table", "--summary", str(summary), "--table", "cost", "--models", "gpt2,della",
          "--out-prefix", str(prefix)])
    out = {ext: prefix.with_suffix(f".{ext}").read_text() for ext in ("tex", "csv", "md", "html")}
    out["summary"] = summary.read_text()
    return out


def md_rows(md: str) -> dict[str, dict[str, str]]:
    """row label -> {column head: cell} of a Markdown table (the paper's layout: "Model" first, a
    "**Dataset: ...**" row per block; non-breaking spaces read as spaces)."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    heads = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(heads, cells)) for line in lines[2:]
            for cells in [[c.strip().replace("\u00a0", " ") for c in line.strip("|").split("|")]]
            if not cells[0].startswith("**Dataset: ")}


def test_cost_rows_carry_the_direction_declared_in_della_cost(cost_tables):
    rows = list(csv.DictReader(cost_tables["summary"].splitlines()))
    for row in rows:
        if row["metric"] == "device":
            assert row["text"] and row["value"] == "" and row["higher_is_better"] == ""
        else:
            direction = COST_METRICS[row["metric"]].higher_is_better  # None: a size, no direction
            assert row["higher_is_better"] == ("" if direction is None else str(direction).lower())
    assert {r["metric"] for r in rows if r["source"].endswith(".jsonl")} == {"train_wall_seconds",
                                                                             "train_max_rss_mb"}


def test_cost_table_mean_std_arrows_dashes_and_device(cost_tables):
    rows = md_rows(cost_tables["md"])
    gpt2, della = rows["gpt2"], rows["della"]
    assert list(gpt2)[1:] == ["Wall (s) ↓ (a)", "Train loop (s) ↓ (b)", "Device hours ↓ (c)", "Tokens/s ↑ (d)",
                              "MFU (%) ↑ (e)", "Peak RSS (MB) ↓ (f)", "Peak GPU (MB) ↓ (g)", "Params (M)", "Device"]
    assert gpt2["Wall (s) ↓ (a)"] == "11.0 ± 1.4"  # the lowest, but against a runner-up missing a seed: no bold
    assert gpt2["Tokens/s ↑ (d)"] == "1050 ± 71" and della["Tokens/s ↑ (d)"] == "**5000 ± 0**"  # higher
    assert della["Wall (s) ↓ (a)"] == "20.0 †"  # della seed 1 has no benchmark record
    assert della["Peak RSS (MB) ↓ (f)"] == "–"  # max_rss "NA"
    assert gpt2["Peak GPU (MB) ↓ (g)"] == "–" and della["Peak GPU (MB) ↓ (g)"] == "950 ± 71"  # alone: no bold
    # a size, not a score: no arrow, never bold
    assert gpt2["Params (M)"] == "1.50 ± 0.00" and della["Params (M)"] == "2.25 ± 0.00"
    assert gpt2["Device"] == "cpu (x86_64, 1 thread)" and della["Device"] == "2 × NVIDIA H100 80GB HBM3"
    assert "- † mean over the seeds" in cost_tables["md"]


def test_cost_table_latex_html_and_csv(cost_tables):
    tex, page = cost_tables["tex"], cost_tables["html"]
    assert r"\begin{tabular}{lrrrrrrrrl}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"Wall (s)$\downarrow$$^{a}$" in tex and r"Tokens/s$\uparrow$$^{d}$" in tex
    assert r"\textbf{5000$\pm$0}" in tex and r"cpu (x86\_64, 1 thread)" in tex
    assert r"20.0$^\dagger$" in tex and r"$^{\dagger}$ mean over the seeds" in tex
    assert " & -- & " in tex  # gpt2's GPU memory
    assert page.startswith("<!DOCTYPE html>") and "<th>Tokens/s ↑<sup>d</sup></th>" in page
    assert "<b>5000 ± 0</b>" in page and '<td class="t">2 × NVIDIA H100 80GB HBM3</td>' in page
    rows = {r["model"]: r for r in csv.DictReader(cost_tables["csv"].splitlines())}
    assert rows["della"]["device"] == "2 × NVIDIA H100 80GB HBM3" and rows["della"]["device_n"] == "2"
    assert float(rows["gpt2"]["parameters"]) == pytest.approx(1.5) and rows["gpt2"]["cuda_max_allocated_mb"] == ""
    # device hours: train loop seconds x processes / 3600 (gpt2: 6 and 8 s on one CPU; della: 3 s on 2 GPUs)
    assert float(rows["gpt2"]["device_hours"]) == pytest.approx(7 / 3600)
    assert float(rows["della"]["device_hours"]) == pytest.approx(6 / 3600)


def test_cost_table_paper_rows_are_table_6s_gpu_hours_under_della(tmp_path):
    summary = tmp_path / "results" / "cost.csv"
    main(["aggregate", "--inputs", *map(str, write_cost_fixtures(tmp_path)), "--out", str(summary)])
    prefix = tmp_path / "results" / "tables" / "cost"
    main(["table", "--summary", str(summary), "--table", "cost", "--models", "gpt2,della", "--paper",
          "--paper-model", "della=DELLA", "--paper-dataset", "d=WP", "--out-prefix", str(prefix)])
    md = prefix.with_suffix(".md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    paper, = [line for line in lines if "↳ *paper*" in line]
    assert lines.index(paper) == 1 + next(i for i, line in enumerate(lines) if line.startswith("| della |"))
    cells = [c.strip() for c in paper.strip("|").split("|")]
    assert cells[3] == "170" and set(cells[1:3] + cells[4:]) == {"–"}  # only Device hours: 170h on WP
    assert "Table 6, Dataset: WritingPrompts" in md and "RTX 3090s" in md


@pytest.mark.parametrize("provenance, text", [
    ({"device": CPU, "world_size": 1}, "cpu (x86_64, 1 thread)"),
    ({"device": {**CPU, "torch_threads": 8}}, "cpu (x86_64, 8 threads)"),
    ({"device": {**CPU, "cpu": "AMD EPYC", "cpu_capability": "AVX512"}}, "cpu (AMD EPYC, AVX512, 1 thread)"),
    ({"device": H100, "world_size": 4}, "4 × NVIDIA H100 80GB HBM3"),
    ({}, "unknown"),
])
def test_device_text(provenance, text):
    assert device_text(provenance) == text


def test_a_bad_benchmark_file_names_itself(tmp_path):
    bench = tmp_path / "results" / "benchmarks" / "train" / "d" / "m" / "seed0.jsonl"
    bench.parent.mkdir(parents=True)
    bench.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"seed0.jsonl:1: not valid JSON"):
        collect([bench])


# ---------------------------------------------------------------------------------------------
# curves, samples page, provenance page


def write_train_log(path: Path, groups: int, steps: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(steps):
        kl = [0.1 * (g + 1) * step for g in range(groups)]
        lines.append({"split": "train", "epoch": step // 6, "step": step, "beta": min(1.0, step / 6), "lr": 1e-3,
                      "loss": 50.0 - step, "ce": 50.0 - step, "ce_per_token": 5.0, "kl": sum(kl), "kl_groups": kl})
        if step % 6 == 5:
            lines.append({"split": "valid", "epoch": step // 6, "step": step + 1, "ce": 45.0 - step, "kl": 1.0})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.parametrize("groups", [0, 1, 3])
def test_curves_draw_one_kl_curve_per_group(tmp_path, groups):
    log = write_train_log(tmp_path / "train-log.jsonl", groups)
    fig = plot_learning_curves(read_train_log(log), "d / m / seed 0")
    ax_ce = fig.axes[0]
    assert [line.get_label() for line in ax_ce.get_lines()] == ["train", "valid (epoch end)"]
    assert list(ax_ce.get_lines()[1].get_xdata()) == [6, 12]
    if groups:  # a latent model: CE, KL per group, β
        _, ax_kl, ax_beta = fig.axes
        assert [line.get_label() for line in ax_kl.get_lines()] == [f"KL $z_{{{g + 1}}}$" for g in range(groups)]
        assert len(ax_beta.get_lines()) == 1 and ax_beta.get_ylabel() == "β"
    else:  # the LM: no KL and no β panel
        assert len(fig.axes) == 1
    out = tmp_path / "fig" / "learning_curves.svg"
    main(["curves", "--train-log", str(log), "--title", "d / m / seed 0", "--out", str(out)])
    svg = out.read_text()
    assert out.stat().st_size > 10_000 and svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "<dc:date>" not in svg  # no creation date: the same log gives the same file
    if groups == 0:
        assert "no latent variable" in svg


@pytest.mark.parametrize("suffix", ["svg", "pdf"])
def test_the_same_figure_saves_to_the_same_bytes(tmp_path, suffix):
    """No date and no random element ids: a rerun of the rule rewrites the same file."""
    records = read_train_log(write_train_log(tmp_path / "log.jsonl", 2))
    first, second = tmp_path / f"a.{suffix}", tmp_path / f"b.{suffix}"
    for out in (first, second):  # as two runs of the rule draw it
        save_figure(plot_learning_curves(records, "t"), out)
    assert first.read_bytes() == second.read_bytes()


def test_long_logs_are_averaged_over_bins_of_steps(tmp_path):
    records = read_train_log(write_train_log(tmp_path / "train-log.jsonl", 2, steps=25))
    ax_ce, ax_kl, _ = plot_learning_curves(records, "t", max_points=10).axes
    train, valid = ax_ce.get_lines()
    assert list(train.get_xdata()) == [1, 4, 7, 10, 13, 16, 19, 22, 24]  # bins of 3 steps, the last of 1
    assert train.get_label() == "train (mean of 3 steps)" and list(valid.get_xdata()) == [6, 12, 18, 24]
    assert list(ax_kl.get_lines()[1].get_ydata())[0] == pytest.approx(0.2)  # mean of 0, 0.2, 0.4


def test_curves_reject_a_broken_log_naming_the_line(tmp_path):
    log = write_train_log(tmp_path / "train-log.jsonl", 1)
    log.write_text(log.read_text() + "{oops\n")
    with pytest.raises(ValueError, match=r"train-log.jsonl:15: not valid JSON"):
        read_train_log(log)
    records = read_train_log(write_train_log(tmp_path / "b.jsonl", 1))
    del records[3]["beta"]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match=r"b.jsonl: record 4: a train step without \['beta'\]"):
        read_train_log(tmp_path / "b.jsonl")
    fig = plot_learning_curves(read_train_log(write_train_log(tmp_path / "ok.jsonl", 1)), "t")
    with pytest.raises(ValueError, match="expected a .png, .svg or .pdf"):
        save_figure(fig, tmp_path / "x.gif")


def test_samples_page_shows_settings_and_the_first_samples_escaped(tmp_path):
    samples = tmp_path / "samples.txt"
    samples.write_text("".join(f"sample {i} <b>&</b>\n" for i in range(30)))
    samples.with_suffix(".json").write_text(json.dumps({
        "kind": "samples", "settings": {"strategy": "sample", "top_p": 0.9}, "seed": 3, "n": 30, "empty": 0,
        "provenance": {"git_commit": "abc", "device": CPU, "time": "t"}}))
    out = tmp_path / "samples.html"
    main(["samples-page", "--samples", str(samples), "--first", "5", "--title", "Samples: d / m", "--out", str(out)])
    page = out.read_text()
    assert "<th>strategy</th><td>sample</td>" in page and "<th>top_p</th><td>0.9</td>" in page
    assert "<th>seed</th><td>3</td>" in page and "cpu (x86_64, 1 thread)" in page
    assert page.count("<li>") == 5 and "<li>sample 4 &lt;b&gt;&amp;&lt;/b&gt;</li>" in page
    assert "sample 5 " not in page and "The first 5 of 30 samples" in page


def test_provenance_page_lists_every_run_and_highlights_differences(tmp_path):
    runs = [p for p in write_cost_fixtures(tmp_path) if p.name == "run.json"]
    out = tmp_path / "provenance.html"
    main(["provenance", "--runs", *map(str, runs), "--out", str(out)])
    page = out.read_text()
    for model, seeds in RUNS.items():
        for seed in range(len(seeds)):
            assert f"d / {model} / seed {seed}" in page
    assert '<td class="differs">abc1</td>' in page  # the commits differ between runs
    assert "differ between runs: device, git commit, world size" in page
    assert "world_size: 2" in page and "model: della" in page  # the full provenance and config
    assert '<td class="name">della</td>' in page and "td.name{white-space:nowrap}" in page  # names never wrap


def resumed_elsewhere(root: Path) -> Path:
    """A run.json whose training a second process resumed at another commit on a GPU."""
    first = {"git_commit": "abc0", "device": CPU, "world_size": 1, "versions": {"torch": "2.13"}}
    second = {"git_commit": "def1", "device": H100, "world_size": 1, "versions": {"torch": "2.13"}}
    run = root / "results" / "runs" / "d" / "della" / "seed0" / "run.json"
    run.parent.mkdir(parents=True)
    run.write_text(json.dumps({
        "kind": "run", "seed": 0, "parameters": 1, "steps": 10, "config": {"model": "della"}, "provenance": second,
        "cost": {"train_seconds": 1.0, "tokens_per_second": 1.0, "tokens_seen": 1, "max_rss_mb": 1.0},
        "processes": [{"from_epoch": 0, "to_epoch": 1, "provenance": first},
                      {"from_epoch": 1, "to_epoch": 2, "provenance": second}]}))
    return run


def test_a_run_resumed_elsewhere_shows_both_processes(tmp_path):
    run = resumed_elsewhere(tmp_path)
    out = tmp_path / "provenance.html"
    main(["provenance", "--runs", str(run), "--out", str(out)])
    page = out.read_text()
    assert '<td class="differs">abc0 → def1</td>' in page  # one run alone, yet its processes differ
    assert '<td class="differs">cpu (x86_64, 1 thread) → NVIDIA H100 80GB HBM3</td>' in page
    assert "<td>2.13</td>" in page  # the same torch in both: one value, not highlighted
    device, = [r for r in collect([run]) if r["metric"] == "device"]
    assert device["text"] == "cpu (x86_64, 1 thread) → NVIDIA H100 80GB HBM3"


# ---------------------------------------------------------------------------------------------
# the workflow plans the report's rules


def test_dry_run_plans_the_cost_table_and_the_report_rules(tmp_path):
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "2")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = proc.stdout
    datasets = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["datasets"]
    runs = sum(len(d["models"]) for d in datasets.values())  # one seed
    for rule, count in {"aggregate_cost": 1, "cost_table": 1, "learning_curves": runs, "samples_page": runs,
                        "provenance": 1}.items():
        assert re.search(rf"^{rule}\s+{count}$", out, re.MULTILINE), rule
    assert ("python -m della aggregate --inputs results/default/runs/synthetic/gpt2/seed0/run.json" in out
            and "benchmarks/train/synthetic-cvae-bart/della-bart/seed0.jsonl --out results/default/cost.csv" in out)
    assert "python -m della table --summary results/default/cost.csv --table cost" in out
    assert ("python -m della curves --train-log results/default/runs/synthetic/della/seed0/train-log.jsonl"
            " --title 'synthetic / della / seed 0'"
            " --out results/default/figures/synthetic/della/seed0/learning_curves.svg" in out)


# ---------------------------------------------------------------------------------------------
# the report of a finished DAG (slow: called by tests/test_e2e.py with the default DAG's workdir)


def report_results(report: Path) -> dict[str, dict]:
    """The report's result entries: path -> {name, labels, mime_type, data_uri, ...}.

    The self-contained report.html holds them as one JSON object (`<script id="results"> var results
    = {...};`), each file base64-encoded in its data URI.
    """
    text = report.read_text(encoding="utf-8")
    marker = "var results = "
    start = text.index(marker, text.index('<script id="results">')) + len(marker)
    results, _ = json.JSONDecoder().raw_decode(text, start)
    return results


def decoded(entry: dict) -> str:
    return base64.b64decode(entry["data_uri"].split(";base64,", 1)[1]).decode("utf-8")


def check_report(workdir: Path) -> Path:
    """Build results/default/report.html in `workdir` and check that it holds Tables 1 and 2 and the cost
    table, and for every
    run (every results/default/runs/*/*/seed*/run.json) its learning curves, its samples page and its
    provenance. Returns the report's path."""
    proc = snakemake(workdir, "--report", "results/default/report.html")
    assert proc.returncode == 0, proc.stderr[-6000:]
    report = workdir / "results" / "default" / "report.html"
    results = report_results(report)
    runs = sorted(workdir.glob("results/default/runs/*/*/seed*/run.json"))
    assert runs, f"no finished run under {workdir}/results/default/runs"

    tables = {name: decoded(results[f"results/default/tables/{name}.html"]) for name in ("table1", "table2", "cost")}
    assert all(f"results/default/tables/{name}.tex" in results for name in tables)
    labels, table_of = {}, {}
    for name in ("table1", "table2"):
        with open(workdir / "results" / "default" / "tables" / f"{name}.csv", newline="") as f:
            for r in csv.DictReader(f):
                if r["kind"] == "model":
                    labels[r["dataset"], r["model"]] = html.escape(r["label"])
                    table_of[r["dataset"]] = name
    assert "Tokens/s ↑" in tables["cost"]
    assert "PPL ↓" in tables["table1"] and "Rouge-L ↑" in tables["table2"]
    provenance = decoded(results["results/default/provenance.html"])
    assert "synthetic" in decoded(results["results/default/tables/table7.html"]).lower()
    assert "Dataset: PTB" in decoded(results["results/default/tables/human_reference.html"])
    for run in runs:
        dataset, model, seed_dir = run.parts[-4:-1]
        seed = seed_dir.removeprefix("seed")
        for table in (tables[table_of[dataset]], tables["cost"]):
            assert f'<tr class="model"><td>{labels[dataset, model]}</td>' in table, (model, table)
        figure = results[f"results/default/figures/{dataset}/{model}/{seed_dir}/learning_curves.svg"]
        assert figure["mime_type"] == "image/svg+xml" and figure["labels"] == {"model": model, "seed": seed}
        assert "<svg" in decoded(figure)
        samples = results[f"results/default/runs/{dataset}/{model}/{seed_dir}/samples.html"]
        first_sample = (run.parent / "samples.txt").read_text(encoding="utf-8").splitlines()[0]
        assert samples["mime_type"] == "text/html" and samples["labels"] == {"model": model, "seed": seed}
        assert f"<li>{html.escape(first_sample)}</li>" in decoded(samples)
        interpolation = results.get(f"results/default/figures/{dataset}/{model}/{seed_dir}/interpolation.html")
        expected = table_of[dataset] == "table1" and model != "gpt2"  # Fig. 3 for every latent model of Table 1
        assert (interpolation is not None) == expected, model
        commit = json.loads(run.read_text())["provenance"]["git_commit"]
        assert f"{dataset} / {model} / seed {seed}" in provenance and str(commit) in provenance
    return report
