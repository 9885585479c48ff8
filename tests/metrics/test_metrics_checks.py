"""Checks at DAG build (metric names, pair metrics), failures vs optional metrics, CLI robustness."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import metrics
from metrics.inputs import InputError
from metrics.options import MetricOptions


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metrics", *args], capture_output=True, text=True)


def test_check_metric_names_returns_names_and_optional_ones():
    names, optional = metrics.check_metric_names(
        ["bleu", {"name": "mauve", "optional": True}, {"name": "cnd"}], paired=False)
    assert names == ["bleu", "mauve", "cnd"] and optional == ["mauve"]


@pytest.mark.parametrize("entries,paired,message", [
    (["bleu", "distinct"], False, r"text_metrics\[1\]: unknown text metric 'distinct'.*Valid: \["),
    (["bleuu"], False, "Did you mean 'bleu'"),
    (["rouge"], False, r"text_metrics\[0\]: 'rouge' scores each sample against its own reference"),
    ([{"name": "bertscore", "optional": True}], False, "only conditional tasks have"),
    (["bleu", "bleu"], False, "listed twice"),
    ([{"name": "bleu", "optional": "yes"}], False, "expected a metric name or"),
    ([{"metric": "bleu"}], False, "expected a metric name or"),
])
def test_check_metric_names_rejects_bad_entries_naming_key_and_choices(entries, paired, message):
    with pytest.raises(ValueError, match=message):
        metrics.check_metric_names(entries, paired)


def test_pair_metrics_are_accepted_where_pairs_exist():
    assert metrics.check_metric_names(["rouge", "bertscore"], paired=True)[0] == ["rouge", "bertscore"]


def test_checking_names_imports_no_metric_module_and_no_torch():
    code = ("import sys, metrics; metrics.check_metric_names(['bleu', 'mauve'], paired=False); "
            "loaded = [m for m in ('torch', 'transformers', 'metrics.bleu', 'metrics.mauve_metric',"
            " 'metrics.bertscore') if m in sys.modules]; print(loaded)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


PACKAGE = Path(metrics.__file__).parent
MODULES = sorted(".".join(("metrics",) + p.relative_to(PACKAGE).with_suffix("").parts)
                 for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone_in_a_fresh_interpreter(module):
    """No import circle: every module of the package imports first, on its own."""
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)


def test_pair_metric_on_an_unconditional_task_is_an_input_error():
    with pytest.raises(InputError, match=r"\['rouge'\] score each sample against its own"):
        metrics.compute(["bleu", "rouge"], ["a b", "c d"], references=["a b", "c d"])


def test_optional_must_name_a_requested_metric():
    with pytest.raises(ValueError, match="not among the requested"):
        metrics.compute(["dist"], ["a b"], optional=["mauve"])


def test_a_failing_metric_fails_the_cli_unless_optional(tmp_path):
    samples = tmp_path / "s.txt"
    samples.write_text("a b c\nd e f\na b\n")
    base = ["compute", "--samples", str(samples), "--references", str(samples),
            "--mauve-encoder", str(tmp_path / "missing"), "--metrics", "dist,mauve"]
    failed = run_cli(*base, "--out", str(tmp_path / "a.json"))
    assert failed.returncode == 1 and "mauve:" in failed.stderr and "optional" in failed.stderr
    assert not (tmp_path / "a.json").exists()
    ok = run_cli(*base, "--optional", "mauve", "--out", str(tmp_path / "b.json"))
    assert ok.returncode == 0, ok.stderr
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["metrics"]["mauve"]["value"] is None and "missing" in doc["metrics"]["mauve"]["error"]
    assert doc["metrics"]["dist1"]["value"] == pytest.approx(6 / 8)


def test_directory_arguments_are_rejected_clearly(tmp_path):
    samples = tmp_path / "s.txt"
    samples.write_text("a b\n")
    as_dir = run_cli("compute", "--samples", str(tmp_path), "--metrics", "dist",
                     "--out", str(tmp_path / "m.json"))
    assert as_dir.returncode == 2 and "is a directory" in as_dir.stderr
    assert "Traceback" not in as_dir.stderr
    out_dir = run_cli("compute", "--samples", str(samples), "--metrics", "dist", "--out", str(tmp_path))
    assert out_dir.returncode == 2 and "--out" in out_dir.stderr and "is a directory" in out_dir.stderr
    assert "Traceback" not in out_dir.stderr


def test_blank_and_single_samples_are_counted_as_warnings():
    blank = metrics.compute(["bleu", "dist"], ["a b", "", "c d"], references=["a b"])
    assert len(blank["warnings"]) == 1 and blank["warnings"][0].startswith("1 of 3 samples are blank")
    single = metrics.compute(["dist"], ["a b c"])
    assert any("a single sample" in w for w in single["warnings"])
    assert metrics.compute(["dist"], ["a b", "c d"])["warnings"] == []


def test_the_document_records_every_option_as_run_beside_the_signatures():
    options = json.loads(json.dumps(metrics.compute(["dist"], ["a b", "c d"], batch_size=7,
                                                    dist_orders=(1, 2))))["options"]
    assert set(options) == {f.name for f in dataclasses.fields(MetricOptions)}
    assert options["batch_size"] == 7 and options["dist_orders"] == [1, 2]


def test_max_samples_takes_a_seeded_subset_and_records_it():
    texts = [f"w{i} x{i % 3}" for i in range(50)]
    one = metrics.compute(["dist"], texts, max_samples=10, sample_seed=4, dist_orders=(1,))
    two = metrics.compute(["dist"], texts, max_samples=10, sample_seed=4, dist_orders=(1,))
    assert one["inputs"]["n_samples"] == 10 and one["inputs"]["subsample"] == {"max_samples": 10,
                                                                               "seed": 4}
    assert one["metrics"] == two["metrics"]  # wall time is kept apart, in "seconds"
    assert set(one["seconds"]) == {"dist"} and one["seconds"]["dist"] >= 0
    assert one["metrics"]["dist1"]["details"]["total"] == 20
    fewer = metrics.compute(["dist"], texts, max_samples=60)
    assert fewer["inputs"]["n_samples"] == 50
    assert fewer["warnings"] == ["50 samples, fewer than max_samples=60: all are scored"]


def test_metrics_json_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        metrics.write_json({"kind": "metrics", "metrics": {}}, tmp_path / "m.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644


BERTSCORE_IN_A_FRESH_INTERPRETER = """
import json, sys
import torch
import metrics
torch.set_num_threads(1)
doc = metrics.compute(["bertscore"], sys.argv[1], references=sys.argv[2], task="conditional", batch_size=4)
print(json.dumps(doc["metrics"]["bertscore"]["value"]))
"""


def test_bertscore_is_the_same_under_every_hash_seed(tmp_path):
    """bert-score batches a call's unique sentences in a Python set's order, which the interpreter's
    hash seed decides; the metric keeps each call within one batch, so no seed changes a digit."""
    rng = random.Random(0)
    words = [f"w{i}" * rng.randint(1, 4) for i in range(300)]
    lines = [" ".join(rng.choices(words, k=6)) for _ in range(160)]  # equal word counts: one length bucket
    (tmp_path / "samples.txt").write_text("\n".join(lines[:80]) + "\n")
    (tmp_path / "refs.txt").write_text("\n".join(lines[80:]) + "\n")
    values = set()
    for hash_seed in ("1", "2"):
        proc = subprocess.run([sys.executable, "-c", BERTSCORE_IN_A_FRESH_INTERPRETER, str(tmp_path / "samples.txt"),
                               str(tmp_path / "refs.txt")], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONHASHSEED": hash_seed})
        assert proc.returncode == 0, proc.stderr[-2000:]
        values.add(proc.stdout.strip().splitlines()[-1])
    assert len(values) == 1, values
