# All eval.json/metrics.json -> results/summary.csv -> results/tables/table1.{tex,csv,md}.
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
        multiext("results/tables/table1", ".tex", ".csv", ".md"),
    params:
        datasets=",".join(DATASETS),
        models=",".join(MODELS),
    log:
        "logs/table1.log",
    localrule: True
    shell:
        "python -m della table --summary {input} --table table1 --datasets {params.datasets:q}"
        " --models {params.models:q} --out-prefix results/tables/table1 > {log} 2>&1"
