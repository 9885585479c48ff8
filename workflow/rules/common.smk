# Config validation, wildcard constraints and every input/params function the rules use.
import json
import os
import re
import shlex
from pathlib import Path

from snakemake.utils import validate

from della.config import experiment_name, resolve_run_config
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
RUN_DIR = results("runs/{dataset}/{model}/seed{seed}")
FIGURE = results("figures/{dataset}/{model}/seed{seed}/learning_curves.svg")
HUMAN_METRICS = results("human/{dataset}/metrics.json")

# Build every run config now, so a bad override, an unknown model (the schema accepts any name: the
# registry decides) or a bad model argument fails at DAG build and names its key.
for _dataset in DATASETS:
    for _model in MODELS:
        resolve_run_config(config, _dataset, _model, SEEDS[0], RESULTS)


wildcard_constraints:
    dataset="|".join(map(re.escape, DATASETS)),
    model="|".join(map(re.escape, MODELS)),
    seed=r"\d+",


def dataset_config(wildcards):
    return config["datasets"][wildcards.dataset]


def dataset_path(ds):
    """A dir/hf `path`: a relative directory is taken relative to the repository root.

    Returned relative to the working directory when it is relative in config, so the rule's
    params (a rerun trigger) do not change when the repository is moved.
    """
    local = REPO / ds["path"]
    if ds["source"] == "hf" and not local.exists():
        return ds["path"]  # a Hugging Face dataset id
    return ds["path"] if Path(ds["path"]).is_absolute() else os.path.relpath(local)


def prepare_inputs(wildcards):
    """The corpus files of a dir source, so that editing them reruns prepare_data."""
    ds = dataset_config(wildcards)
    if ds["source"] != "dir":
        return []
    return [f"{dataset_path(ds)}/{split}.txt" for split in ("train", "valid", "test")]


def prepare_args(wildcards):
    ds = dataset_config(wildcards)
    args = ["--source", ds["source"]]
    if ds["source"] == "synthetic":
        args += ["--seed", ds["seed"]]
        for split in ("train", "valid", "test"):
            args += [f"--n-{split}", ds["sizes"][split]]
    else:
        args += ["--path", dataset_path(ds)]
    if ds["source"] == "hf":
        args += ["--text-field", ds["text_field"]]
        if ds["hf_config"]:
            args += ["--hf-config", ds["hf_config"]]
    for key in ("max_train_lines", "max_eval_lines"):
        if ds[key] is not None:
            args += [f"--{key.replace('_', '-')}", ds[key]]
    return shlex.join(map(str, args))


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
    (unknown names and pair metrics on these unconditional samples fail here, at DAG build)."""
    ds = config["datasets"][dataset]
    key = "text_metrics" if ds["text_metrics"] is None else f"datasets.{dataset}.text_metrics"
    entries = config["text_metrics"] if ds["text_metrics"] is None else ds["text_metrics"]
    return check_metric_names(entries, paired=False, key=key)


for _dataset in DATASETS:
    text_metrics(_dataset)


def text_metrics_args(wildcards):
    """`--metrics NAMES [--optional NAMES]` for `python -m metrics compute`."""
    names, optional = text_metrics(wildcards.dataset)
    args = ["--metrics", ",".join(names)] + (["--optional", ",".join(optional)] if optional else [])
    return shlex.join(args)


def run_dir(wildcards, output):
    """The run directory, from the rule's first output (which lies in it)."""
    return str(Path(output[0]).parent)


def rule_resources(rule_name):
    """Scheduler resources of a rule, from config `resources`; optional strings only when set."""
    return {k: v for k, v in config["resources"][rule_name].items() if v is not None}


def rule_threads(rule_name):
    """Snakemake threads = the rule's cpus_per_task, so local runs do not oversubscribe cores."""
    return config["resources"][rule_name]["cpus_per_task"]


def train_launcher():
    """`python` for one device; `torchrun` (DistributedDataParallel, one process per GPU) when the
    train rule asks for several GPUs (resources.train.gpu > 1)."""
    gpus = config["resources"]["train"].get("gpu") or 0
    return f"torchrun --standalone --nproc_per_node {gpus}" if gpus > 1 else "python"


def every_run(pattern):
    """`pattern` (with the {dataset}, {model}, {seed} wildcards) for every run of the config."""
    return expand(pattern, dataset=DATASETS, model=MODELS, seed=SEEDS)


def result_files():
    """Every eval.json and (where text metrics are configured) metrics.json, with the dataset's
    human reference row (workflow/rules/human.smk)."""
    files = every_run(f"{RUN_DIR}/eval.json")
    for dataset in DATASETS:
        if text_metrics(dataset)[0]:
            files += expand(f"{RUN_DIR}/metrics.json", dataset=dataset, model=MODELS, seed=SEEDS)
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


def final_outputs():
    return [
        results("summary.csv"),
        *expand(results("tables/{table}.{ext}"), table=[*config["tables"]["names"], "cost"], ext=TABLE_EXTS),
        *every_run(f"{RUN_DIR}/samples.txt"),
        *every_run(f"{RUN_DIR}/samples.html"),
        *every_run(FIGURE),
        results("provenance.html"),
        *expand(results("tables/{table}.{ext}"), table=["table7", "human_reference"], ext=TABLE_EXTS),
        *expand(results("figures/{dataset}/{model}/seed{seed}/interpolation.html"), dataset=DATASETS,
                model=latent_models(), seed=SEEDS),
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
