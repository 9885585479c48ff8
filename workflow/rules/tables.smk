# All eval.json/metrics.json -> results/summary.csv -> results/tables/table1.{tex,csv,md,html};
# all run.json + train benchmarks -> results/cost.csv -> results/tables/cost.{tex,csv,md,html}.
# These need every result: a failed run stops them (and the workflow) rather than hiding in a
# table. A value that a metric could not compute is null in its JSON and shows as "–".


rule aggregate:
    input:
        result_files(),
    output:
        "results/summary.csv",
    log:
        "logs/aggregate.log",
    localrule: True
    shell:
        "python -m della aggregate --inputs {input} --out {output} > {log} 2>&1"


rule table1:
    input:
        "results/summary.csv",
    output:
        **table_outputs("table1"),
    params:
        table="table1",
        datasets=",".join(DATASETS),
        models=",".join(MODELS),
    log:
        "logs/table1.log",
    localrule: True
    shell:
        "python -m della table --summary {input} --table {params.table} --datasets {params.datasets:q}"
        " --models {params.models:q} --out-prefix results/tables/{params.table} > {log} 2>&1"


# The training cost of every model (della/cost.py declares each number's label and direction).
use rule aggregate as aggregate_cost with:
    input:
        every_run(f"{RUN_DIR}/run.json"),
        every_run("results/benchmarks/train/{dataset}/{model}/seed{seed}.jsonl"),
    output:
        "results/cost.csv",
    log:
        "logs/aggregate_cost.log",


use rule table1 as cost_table with:
    input:
        "results/cost.csv",
    output:
        **table_outputs("cost"),
    params:
        table="cost",
    log:
        "logs/cost_table.log",


localrules:
    aggregate_cost,
    cost_table,
