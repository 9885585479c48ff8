# All eval.json/metrics.json -> results/<experiment>/summary.csv -> tables/<name>.{tex,compact.tex,csv,md,html}
# for each name of config `tables.names` (table1 by default);
# all run.json + train benchmarks -> results/cost.csv -> results/tables/cost.{...}.
# These need every result: a failed run stops them (and the workflow) rather than hiding in a
# table. A value that a metric could not compute is null in its JSON and shows as "–".
# The code that reads and renders them is an input, so editing it reruns these rules.
import shlex

from della.models import default_label, paper_row
from della.tables import PAPER_DIR, PAPER_TABLES, TABLES

TABLES_CODE = str(REPO / "della" / "tables.py")


def table_args(models, datasets, paper_rows):
    """Row labels of `models` (config `label`, else the model's paper name), the rows of each dataset
    (the models that run on it), and the paper's rows if asked for (each entry's `paper_row`, else its
    model's paper name; with the `tables.paper_datasets` names of `datasets`)."""
    args = ["--convention", config["tables"]["convention"]]
    for dataset in datasets:
        args += ["--dataset-models", f"{dataset}={','.join(dataset_models(config, dataset))}"]
    for name in models:
        entry = config["models"][name]
        args += ["--label", f"{name}={entry['label'] or default_label(entry['model'])}"]
        row = paper_rows and paper_row(entry)
        if row:
            args += ["--paper-model", f"{name}={row}"]
    if paper_rows:
        args.append("--paper")
        for dataset, paper_dataset in config["tables"]["paper_datasets"].items():
            if dataset in datasets:
                args += ["--paper-dataset", f"{dataset}={paper_dataset}"]
    return shlex.join(args)


rule aggregate:
    input:
        results=result_files(),
        code=TABLES_CODE,
    output:
        results("summary.csv"),
    log:
        logs("aggregate.log"),
    localrule: True
    shell:
        "python -m della aggregate --inputs {input.results} --out {output} > {log} 2>&1"


# One rule per table of config `tables.names` (layouts of della.tables.TABLES: table1, table4, ...),
# named after it, over the datasets of its task (TABLE_TASK) and the models that run on them; table1
# always, as cost_table below is made from it. Paper rows only where the paper has that table.
for _table in dict.fromkeys(["table1", *config["tables"]["names"]]):

    rule:
        name:
            _table
        input:
            summary=results("summary.csv"),
            code=TABLES_CODE,
            paper=[str(PAPER_DIR / f"{name}.csv") for name in PAPER_TABLES.get(_table, [])],
        output:
            **table_outputs(_table),
            compact=results(f"tables/{_table}.compact.tex"),
        params:
            table=_table,
            out_prefix=table_prefix,
            datasets=",".join(table_datasets(_table)),
            models=",".join(table_models(_table)),
            # a function: a params string is a wildcard pattern, and a label may hold braces ("\\textsc{DELLA}")
            args=lambda wildcards, table=_table: table_args(table_models(table), table_datasets(table),
                                                            config["tables"]["paper_rows"] and table in PAPER_TABLES),
        log:
            logs(f"{_table}.log"),
        localrule: True
        shell:
            "python -m della table --summary {input.summary} --table {params.table} --datasets {params.datasets:q}"
            " --models {params.models:q} {params.args} --out-prefix {params.out_prefix} > {log} 2>&1"


# The training cost of every model (della/cost.py declares each number's label and direction); paper
# rows: the paper's Table 6, DELLA's GPU hours.
use rule aggregate as aggregate_cost with:
    input:
        results=every_run(f"{RUN_DIR}/run.json")
        + every_run(results("benchmarks/train/{dataset}/{model}/seed{seed}.jsonl")),
        code=[TABLES_CODE, str(REPO / "della" / "cost.py")],
    output:
        results("cost.csv"),
    log:
        logs("aggregate_cost.log"),


use rule table1 as cost_table with:
    input:
        summary=results("cost.csv"),
        code=TABLES_CODE,
        paper=[str(PAPER_DIR / f"{name}.csv") for name in PAPER_TABLES["cost"]],
    output:
        **table_outputs("cost"),
        compact=results("tables/cost.compact.tex"),
    params:
        table="cost",
        out_prefix=table_prefix,
        datasets=",".join(DATASETS),
        models=",".join(MODELS),
        args=lambda wildcards: table_args(MODELS, DATASETS, paper_rows=config["tables"]["paper_rows"]),
    log:
        logs("cost_table.log"),


localrules:
    aggregate_cost,
    cost_table,
