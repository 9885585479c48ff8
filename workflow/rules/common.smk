# Config validation, wildcard constraints and every input/params function the rules use.
import json
import os
import re
import shlex
from pathlib import Path

from snakemake.utils import validate

from della.config import (CONDITIONAL_SOURCES, ConfigError, check_model_args, dataset_models, dataset_task,
                          experiment_name, resolve_run_config)
from metrics import check_metric_names

# Fills in the schema's defaults; rejects unknown keys and registry names, naming the key.
validate(config, schema="../schemas/config.schema.yaml")


EXPERIMENT = experiment_name(config, (workflow.overwrite_configfiles or [None])[-1])
RESULTS = f"results/{EXPERIMENT}"  # every output of this experiment lies below it


def results(path):
    return f"{RESULTS}/{path}"


def logs(path):
    return f"logs/{EXPERIMENT}/{path}"


DATASETS = list(config["datasets"])
MODELS = list(config["models"])
SEEDS = [int(s) for s in config["seeds"]]
TASK = {dataset: dataset_task(config["datasets"][dataset]) for dataset in DATASETS}  # lm | conditional
LM_DATASETS = [d for d in DATASETS if TASK[d] == "lm"]
CONDITIONAL_DATASETS = [d for d in DATASETS if TASK[d] == "conditional"]
# Every model entry names a registered model with valid args, whether or not a dataset runs it.
for _model, _entry in config["models"].items():
    check_model_args(_model, _entry["model"], _entry.get("args") or {})
# The (dataset, model) pairs that run: a dataset's `models` list, else every model entry.
RUNS = [(dataset, model) for dataset in DATASETS for model in dataset_models(config, dataset)]
RUN_DIR = results("runs/{dataset}/{model}/seed{seed}")
FIGURE = results("figures/{dataset}/{model}/seed{seed}/learning_curves.svg")
HUMAN_METRICS = results("human/{dataset}/metrics.json")

# Build every run config now, so a bad override, an unknown model (the schema accepts any name: the
# registry decides), a bad model argument or a model that cannot run on its dataset's task (Optimus
# on a conditional dataset, a BART backbone on sentences) fails at DAG build and names its key.
for _dataset, _model in RUNS:
    resolve_run_config(config, _dataset, _model, SEEDS[0], RESULTS)


def one_of(names):
    """A wildcard regex matching exactly these names (none: matches nothing, names are never empty)."""
    return "|".join(map(re.escape, names))


wildcard_constraints:
    dataset=one_of(DATASETS),
    model=one_of(MODELS),
    seed=r"\d+",


def dataset_config(wildcards):
    return config["datasets"][wildcards.dataset]


def dataset_path(ds):
    """A dir/hf/jsonl/hf-conditional `path`: a relative directory is taken relative to the repository root.

    Returned relative to the working directory when it is relative in config, so the rule's
    params (a rerun trigger) do not change when the repository is moved.
    """
    local = REPO / ds["path"]
    if ds["source"] in ("hf", "hf-conditional") and not local.exists():
        return ds["path"]  # a Hugging Face dataset id
    return ds["path"] if Path(ds["path"]).is_absolute() else os.path.relpath(local)


SPLIT_FILE_SUFFIX = {"lm": "txt", "conditional": "jsonl"}  # what prepare-data writes per split


def prepare_inputs(wildcards):
    """The corpus files of a dir or jsonl source, so that editing them reruns the preparation."""
    ds = dataset_config(wildcards)
    if ds["source"] not in ("dir", "jsonl"):
        return []
    suffix = SPLIT_FILE_SUFFIX[TASK[wildcards.dataset]]
    return [f"{dataset_path(ds)}/{split}.{suffix}" for split in ("train", "valid", "test")]


def prepare_args(wildcards):
    """The `python -m della prepare-data` options of the dataset entry (della/data/prepare.py)."""
    ds = dataset_config(wildcards)
    args = ["--source", ds["source"]]
    if ds["source"] in ("synthetic", "synthetic-conditional"):
        args += ["--seed", ds["seed"]]
        for split in ("train", "valid", "test"):
            args += [f"--n-{split}", ds["sizes"][split]]
    else:
        args += ["--path", dataset_path(ds)]
    if ds["source"] == "hf":
        args += ["--text-field", ds["text_field"]]
    if ds["source"] == "hf-conditional":
        args += ["--source-field", ds["source_field"], "--target-field", ds["target_field"]]
    if ds["source"] in ("hf", "hf-conditional") and ds["hf_config"]:
        args += ["--hf-config", ds["hf_config"]]
    if TASK[wildcards.dataset] == "conditional":
        args += ["--truncation-side", ds["truncation_side"]] + ["--wp-preprocess"] * ds["wp_preprocess"]
    for key in ("max_train_lines", "max_eval_lines", "max_source_tokens", "max_target_tokens"):
        if ds.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", ds[key]]
    return shlex.join(map(str, args))


def split_file(dataset, split):
    """A prepared split of the dataset: {split}.txt (sentences) or {split}.jsonl (source/target pairs)."""
    return results(f"data/{dataset}/{split}.{SPLIT_FILE_SUFFIX[TASK[dataset]]}")


def train_split(wildcards):
    return split_file(wildcards.dataset, "train")


def training_splits(wildcards):
    return [split_file(wildcards.dataset, split) for split in ("train", "valid")]


def test_split(wildcards):
    return split_file(wildcards.dataset, "test")


def tokenizer_args(wildcards):
    tok = dataset_config(wildcards)["tokenizer"]
    if tok["pretrained"]:
        return shlex.join(["--pretrained", tok["pretrained"]])
    return f"--vocab-size {tok['vocab_size']}"


def run_config_json(wildcards):
    """The resolved run config (della.config.resolve_run_config) as JSON: the only place it is built."""
    run = resolve_run_config(config, wildcards.dataset, wildcards.model, int(wildcards.seed), RESULTS)
    return json.dumps(run)


def text_metrics(dataset):
    """(names, optional names) of the dataset's text metrics, checked by the metrics registry
    (unknown names, and pair metrics on a sentence dataset's unconditional samples, fail here, at
    DAG build). A conditional dataset's default is `conditional_text_metrics`."""
    ds, conditional = config["datasets"][dataset], TASK[dataset] == "conditional"
    if ds["text_metrics"] is not None:
        key = f"datasets.{dataset}.text_metrics"
    else:
        key = "conditional_text_metrics" if conditional else "text_metrics"
    entries = config[key] if ds["text_metrics"] is None else ds["text_metrics"]
    return check_metric_names(entries, paired=conditional, key=key)


for _dataset in DATASETS:
    text_metrics(_dataset)


def text_metrics_args(wildcards):
    """`--metrics NAMES [--optional NAMES]` for `python -m metrics compute`; on a conditional dataset
    also `--sources` (the test pairs' sources, aligned with the samples), which makes the task
    conditional: each sample is scored against its own target; and MAUVE's and BERTScore's models."""
    names, optional = text_metrics(wildcards.dataset)
    args = ["--metrics", ",".join(names)] + (["--optional", ",".join(optional)] if optional else [])
    if TASK[wildcards.dataset] == "conditional":
        args += ["--sources", split_file(wildcards.dataset, "test")]
    if "mauve" in names + optional:
        args += ["--mauve-encoder", mauve_encoder(wildcards.dataset)]
    if "bertscore" in names + optional:
        args += ["--bertscore-model", config["bertscore_model"]]
    return shlex.join(args)


def feature_lm_run(dataset):
    """The run directory of the dataset's plain GPT-2 LM whose hidden states are MAUVE's features
    (config `mauve_encoder: lm`), or None (MAUVE then uses minilm)."""
    if config["mauve_encoder"] != "lm" or TASK[dataset] != "lm":
        return None
    lms = [m for m in dataset_models(config, dataset) if config["models"][m]["model"] == "gpt2"]
    return RUN_DIR.format(dataset=dataset, model=lms[0], seed=SEEDS[0]) if lms else None


def mauve_encoder(dataset):
    if config["mauve_encoder"] != "lm":
        return config["mauve_encoder"]
    return results(f"encoders/{dataset}") if feature_lm_run(dataset) else "minilm"


def feature_lm_input(wildcards):
    """The exported feature LM a text_metrics job reads (none without one, or without MAUVE)."""
    names, optional = text_metrics(wildcards.dataset)
    if "mauve" not in names + optional or not feature_lm_run(wildcards.dataset):
        return []
    return [results(f"encoders/{wildcards.dataset}/della-export.json")]


def run_dir(wildcards, output):
    """The run directory, from the rule's first output (which lies in it)."""
    return str(Path(output[0]).parent)


def rule_resources(rule_name):
    """Scheduler resources of a rule, from config `resources`; optional strings only when set. Memory
    and wall-clock limit grow with the attempt, so the profile's retry of a job killed for running
    out of either gets more (a retried train resumes from its checkpoint)."""
    resources = {k: v for k, v in config["resources"][rule_name].items() if v is not None}
    return {**resources, **{k: per_attempt(resources[k]) for k in ("mem_mb", "runtime")}}


def per_attempt(value):
    return lambda wildcards, attempt: value * attempt


def rule_threads(rule_name):
    """Snakemake threads = the rule's cpus_per_task, so local runs do not oversubscribe cores."""
    return config["resources"][rule_name]["cpus_per_task"]


def train_launcher(wildcards, resources):
    """`python` for one device; `torchrun` (DistributedDataParallel, one process per GPU) when the
    train job has several GPUs (resources.train.gpu > 1, or `--set-resources train:gpu=N`)."""
    gpus = resources.get("gpu", 0) or 0
    return f"torchrun --standalone --nproc_per_node {gpus}" if gpus > 1 else "python"


def every_run(pattern, datasets=None, models=None):
    """`pattern` (with the {dataset}, {model}, {seed} wildcards) for every run of the config: each
    seed of each (dataset, model) pair in RUNS, optionally only of these datasets or models."""
    return [path for dataset, model in RUNS
            if (datasets is None or dataset in datasets) and (models is None or model in models)
            for path in expand(pattern, dataset=dataset, model=model, seed=SEEDS)]


def result_files():
    """Every eval.json and (where text metrics are configured) metrics.json, with the human
    reference row of each sentence dataset (workflow/rules/human.smk)."""
    files = every_run(f"{RUN_DIR}/eval.json")
    for dataset in DATASETS:
        if text_metrics(dataset)[0]:
            files += every_run(f"{RUN_DIR}/metrics.json", datasets=[dataset])
            if TASK[dataset] == "lm":
                files.append(HUMAN_METRICS.format(dataset=dataset))
    return files


TABLE_EXTS = ["tex", "csv", "md", "html"]


def table_outputs(name):
    """The files of `python -m della table --out-prefix results/<experiment>/tables/<name>`; the HTML (shown)
    and the LaTeX (to download) go into the report, captioned by workflow/report/<name>.rst."""
    outputs = {ext: results(f"tables/{name}.{ext}") for ext in TABLE_EXTS}
    for ext in ("html", "tex"):
        outputs[ext] = report(outputs[ext], caption=f"../report/{name}.rst", category="Tables",
                              labels={"table": name, "format": ext})
    return outputs


def table_prefix(wildcards, output):
    """--out-prefix of `python -m della table`: its outputs without the extension."""
    return output.csv.removesuffix(".csv")


# The task of the datasets each paper table renders: Tables 1, 4, 5, 8 sentences, 2 and 9 conditional
# generation (della/tables.py TABLES holds their columns).
TABLE_TASK = {"table1": "lm", "table4": "lm", "table5": "lm", "table8": "lm",
              "table2": "conditional", "table9": "conditional"}


def table_datasets(table):
    """The datasets a paper table renders, in config order: those of its task."""
    return [d for d in DATASETS if TASK[d] == TABLE_TASK[table]]


def table_models(table):
    """The model entries with a run on one of the table's datasets, in config order (its rows)."""
    datasets = table_datasets(table)
    return [m for m in MODELS if any((d, m) in RUNS for d in datasets)]


TASK_SOURCES = {"lm": "synthetic | dir | hf", "conditional": " | ".join(CONDITIONAL_SOURCES)}
for _index, _table in enumerate(config["tables"]["names"]):
    if not table_datasets(_table):
        _task = TABLE_TASK[_table]
        raise ConfigError(f"tables.names[{_index}]: {_table} renders {_task} datasets (datasets.<name>.source: "
                          f"{TASK_SOURCES[_task]}), and this config has none: {TASK}")


def final_outputs():
    return [
        results("summary.csv"),
        *expand(results("tables/{table}.{ext}"), table=[*config["tables"]["names"], "cost"], ext=TABLE_EXTS),
        *every_run(f"{RUN_DIR}/samples.txt"),
        *every_run(f"{RUN_DIR}/samples.html"),
        *every_run(FIGURE),
        results("provenance.html"),
        *expand(results("tables/table7.{ext}"), ext=TABLE_EXTS),  # every dataset (della/data/stats.py)
        # the human reference and Fig. 3 read sentence datasets (metrics/reference, interpolate.py)
        *(expand(results("tables/human_reference.{ext}"), ext=TABLE_EXTS) if LM_DATASETS else []),
        *every_run(results("figures/{dataset}/{model}/seed{seed}/interpolation.html"), datasets=LM_DATASETS,
                   models=latent_models()),
        *([results("figures/layer_sweep.svg")] if config["figures"]["layer_sweep"] else []),
    ]



def run_summary():
    """What a finished run prints: its main table (Markdown) and where the LaTeX and the report go."""
    name = config["tables"]["names"][0]
    table = Path(results(f"tables/{name}.md"))
    if not table.exists():
        return ""
    return "\n".join([
        f"\n{name} of experiment '{EXPERIMENT}':\n", table.read_text(),
        f"LaTeX: {results(f'tables/{name}.tex')} (paper-ready: {results(f'tables/{name}.compact.tex')}), "
        f"cost table: {results('tables/cost.tex')}",
        f"Report: snakemake --report {results('report.html')}" + _configfile_flag(),
    ])


def _configfile_flag():
    files = workflow.overwrite_configfiles
    return f" --configfile {shlex.join(map(str, files))}" if files else ""
