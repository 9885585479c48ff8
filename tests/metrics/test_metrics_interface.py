"""Input hygiene, the CLI, the JSON contract, the registry and a local GPT-2-style encoder."""

from __future__ import annotations

import json
import math
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import metrics
from metrics import registry
from metrics.inputs import InputError
from metrics.registry import register_metric

CONTRACT_KEYS = {"value", "higher_is_better", "label", "display_scale", "decimals", "signature",
                 "details"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metrics", *args], capture_output=True, text=True)


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return str(path)


def test_cli_writes_the_metrics_json_contract(tmp_path, shared_lines):
    samples = write(tmp_path / "s.txt", "\n".join(shared_lines("ptb", "valid", 200)) + "\n")
    refs = write(tmp_path / "r.txt", "\n".join(shared_lines("ptb", "test", 300)) + "\n")
    out = tmp_path / "out" / "metrics.json"
    result = run_cli("compute", "--samples", samples, "--references", refs, "--out", str(out),
                     "--metrics", "bleu,self_bleu,dist,js,cnd", "--dist-orders", "1,2")
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["kind"] == "metrics"
    assert set(doc["metrics"]) == {"bleu", "self_bleu", "dist", "dist1", "dist2", "js", "js2",
                                   "cnd"}
    for key, entry in doc["metrics"].items():
        assert CONTRACT_KEYS <= set(entry), key
        assert isinstance(entry["value"], float) and "error" not in entry
        assert entry["higher_is_better"] == registry.get(key).higher_is_better
        assert "tok:whitespace" in entry["signature"] and "version:" in entry["signature"]
        assert entry["details"]["recipe"]
    assert doc["metrics"]["self_bleu"]["label"] == "SB"
    assert doc["metrics"]["self_bleu"]["higher_is_better"] is False
    assert doc["inputs"]["samples"] == samples and doc["inputs"]["n_samples"] == 200
    assert doc["inputs"]["n_references"] == 300 and doc["inputs"]["task"] == "unconditional"
    assert "sacrebleu" in doc["versions"] and not list(out.parent.glob(".*.tmp"))


def test_cli_reads_jsonl_targets_with_newlines_and_pairs_them(tmp_path):
    rows = [{"source": "p1", "target": "a b\nc d"}, {"source": "p2", "target": "e f"}]
    refs = write(tmp_path / "t.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    samples = write(tmp_path / "s.jsonl", '"a b c d"\n{"text": "e f"}\n')
    out = tmp_path / "m.json"
    result = run_cli("compute", "--samples", samples, "--references", refs, "--sources", refs,
                     "--metrics", "rouge", "--out", str(out))
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["inputs"]["task"] == "conditional"
    assert doc["metrics"]["rouge1"]["value"] == pytest.approx(1.0)


@pytest.mark.parametrize("content,message", [
    (b"", "no non-empty line"),
    (b"\n\n", "no non-empty line"),
    (b"fine\nbad \xff byte\n", "s.txt:2: not valid UTF-8"),
])
def test_cli_rejects_bad_sample_files_naming_file_and_line(tmp_path, content, message):
    samples = write(tmp_path / "s.txt", content)
    result = run_cli("compute", "--samples", samples, "--metrics", "dist", "--out",
                     str(tmp_path / "m.json"))
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "m.json").exists()


def test_paired_inputs_need_equal_counts():
    with pytest.raises(InputError, match="has 2 lines but <references argument> has 1"):
        metrics.compute(["rouge"], ["a", "b"], references=["a"], task="conditional")
    with pytest.raises(InputError, match="has 2 lines but <sources argument> has 1"):
        metrics.compute(["dist"], ["a", "b"], sources=["x"], task="unconditional")
    unpaired = metrics.compute(["bleu"], ["a b", "c"], references=["a b"])  # unconditional: fine
    assert unpaired["inputs"]["n_references"] == 1


@pytest.mark.parametrize("samples, references", [(3, 5), (5, 3)])
def test_paired_counts_are_checked_before_max_samples_subsamples(samples, references):
    """A subsample cut to equal lengths would hide the mismatch (or index past the shorter file)."""
    with pytest.raises(InputError, match=f"has {samples} lines but <references argument> has {references}"):
        metrics.compute(["rouge"], [f"s {i}" for i in range(samples)],
                        references=[f"r {i}" for i in range(references)], task="conditional", max_samples=2)


def test_unknown_metric_and_option_give_suggestions():
    with pytest.raises(KeyError, match="Did you mean 'bleu'"):
        metrics.compute(["bleuu"], ["a b"])
    with pytest.raises(ValueError, match="valid options"):
        metrics.compute(["dist"], ["a b"], bleu_orderr=3)
    with pytest.raises(ValueError, match="tokenizer"):
        metrics.compute(["dist"], ["a b"], tokenizer="spacy")


@pytest.mark.parametrize("policy,n_samples,n_dropped", [("keep", 4, 0), ("drop", 3, 1)])
def test_empty_lines_are_counted_under_keep_and_drop(policy, n_samples, n_dropped):
    doc = metrics.compute(["self_bleu", "dist"], ["a b c", "", "a b d", "x y"], empty=policy)
    assert doc["inputs"]["n_samples"] == n_samples
    assert doc["inputs"]["n_empty_samples"] == 1 and doc["inputs"]["n_dropped_samples"] == n_dropped
    assert f"empty:{policy}" in doc["metrics"]["self_bleu"]["signature"]
    assert doc["metrics"]["dist1"]["details"]["total"] == 8


def test_drop_removes_whole_pairs_and_error_names_the_line():
    doc = metrics.compute(["rouge"], ["a b", "c", "d"], references=["a b", "", "d"], empty="drop",
                          task="conditional")
    assert doc["inputs"]["n_samples"] == doc["inputs"]["n_references"] == 2
    assert doc["metrics"]["rouge1"]["value"] == pytest.approx(1.0)
    with pytest.raises(InputError, match=r"<references argument>:2: empty line"):
        metrics.compute(["rouge"], ["a b", "c"], references=["a b", ""], empty="error",
                        task="conditional")


def test_registry_declares_direction_once_and_rejects_duplicates():
    assert registry.get("rouge2").label == "Rouge-2" and registry.get("rouge2").metric == "rouge"
    assert registry.get("cnd").higher_is_better is False and registry.get("cnd").label == "CND*"
    assert registry.get("bleu").display_scale == 100 and registry.get("mauve").display_scale == 1
    assert set(registry.names()) == {"bleu", "self_bleu", "dist", "js", "cnd", "mauve", "rouge",
                                     "bertscore"}
    with pytest.raises(ValueError, match="already registered"):
        register_metric("bleu", label="B", higher_is_better=True, display_scale=1, decimals=2,
                        version="1", needs="samples", impl="metrics.bleu:bleu")


def test_tokenizers_keep_pretokenised_text_unless_asked(shared_lines):
    text = "the <unk> company 's N shares did n't rise"
    default = metrics.compute(["dist"], [text], dist_orders=(1,))["metrics"]["dist1"]
    split13a = metrics.compute(["dist"], [text], dist_orders=(1,), tokenizer="13a")
    assert default["details"]["total"] == 9
    assert split13a["metrics"]["dist1"]["details"]["total"] == 11  # < unk >
    assert "tok:13a" in split13a["metrics"]["dist1"]["signature"]


def tiny_gpt2_dir(tmp_path: Path) -> Path:
    """A random one-layer GPT-2 and its word-level tokenizer over "a".."h", saved as a local directory."""
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

    words = "<unk> <eos> a b c d e f g h".split()
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, "<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    model_dir = tmp_path / "tiny-gpt2"
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                            eos_token="<eos>").save_pretrained(model_dir)
    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=len(words), n_positions=16, n_embd=16, n_layer=1,
                         n_head=2)).save_pretrained(model_dir)
    return model_dir


def test_mauve_runs_on_a_local_causal_lm_directory(tmp_path):
    model_dir = tiny_gpt2_dir(tmp_path)
    texts = ["a b c", "d e", "f g h a", "b b b", "c a", "h g f e d"] * 3
    entry = metrics.compute(["mauve"], texts, references=texts[::-1], mauve_encoder=str(model_dir),
                            mauve_num_buckets=2)["metrics"]["mauve"]
    assert entry["value"] is not None and 0 < entry["value"] <= 1, entry.get("error")
    assert entry["details"]["model_type"] == "gpt2" and entry["details"]["max_length"] == 16


def test_mauve_is_the_mean_over_its_kmeans_seeds_with_their_standard_error(tmp_path):
    model_dir, rng = tiny_gpt2_dir(tmp_path), random.Random(0)
    samples = [" ".join(rng.choices("abcd", k=rng.randint(2, 6))) for _ in range(40)]
    references = [" ".join(rng.choices("abcdefgh", k=rng.randint(2, 6))) for _ in range(40)]

    def mauve(**options) -> dict:
        return metrics.compute(["mauve"], samples, references=references, mauve_encoder=str(model_dir),
                               mauve_num_buckets=6, **options)["metrics"]["mauve"]

    singles = [mauve(mauve_seeds=1, mauve_seed=seed) for seed in (25, 26, 27)]
    values = [entry["value"] for entry in singles]
    pooled = mauve(mauve_seeds=3)
    assert len(set(values)) > 1  # the k-means seed moves MAUVE here
    assert pooled["value"] == pytest.approx(statistics.fmean(values)) and pooled["details"]["by_seed"] == values
    assert pooled["stderr"] == pytest.approx(statistics.stdev(values) / math.sqrt(3))
    assert "|seed:25..27-mean|" in pooled["signature"] and "|seed:26|" in singles[1]["signature"]
    assert "stderr" not in singles[0]  # one k-means run has no spread to report
