# The human reference row of each sentence dataset: the text metrics of human text, scored exactly as
# a run's samples are (the validation split as "samples", as many as a run generates, against the
# test split). `python -m della aggregate` reads it as the row "Human". A conditional dataset has
# none (the paper's Tables 2 and 9 print none; a validation target has no test pair to be scored against).


def human_sample_count(wildcards):
    """generate.n_samples of the dataset's runs (its first model's, as resolved for its runs)."""
    model = dataset_models(config, wildcards.dataset)[0]
    return resolve_run_config(config, wildcards.dataset, model, SEEDS[0])["generate"]["n_samples"]


rule human_metrics:
    input:
        samples=results("data/{dataset}/valid.txt"),
        references=results("data/{dataset}/test.txt"),
        mauve_features=feature_lm_input,  # the same MAUVE features as the runs' rows
    output:
        HUMAN_METRICS,
    wildcard_constraints:
        dataset=one_of(LM_DATASETS),
    params:
        metric_args=text_metrics_args,
        n_samples=human_sample_count,
    log:
        logs("human_metrics/{dataset}.log"),
    threads: rule_threads("text_metrics")
    resources:
        **rule_resources("text_metrics"),
    shell:
        "python -m metrics compute --samples {input.samples} --references {input.references}"
        " --max-samples {params.n_samples} {params.metric_args} --threads {threads}"
        " --out {output} > {log} 2>&1"


# The same metrics of human text on the paper's datasets, computed once by metrics/reference/human.py
# from ../shared/data and shipped as numbers, so every report has them to read a table against.
rule human_reference_table:
    input:
        reference=str(REPO / "metrics" / "reference" / "human.csv"),
        code=TABLES_CODE,
    output:
        **table_outputs("human_reference"),
        compact=results("tables/human_reference.compact.tex"),
    params:
        summary=results("human_reference.csv"),
        out_prefix=table_prefix,
    log:
        logs("human_reference_table.log"),
    localrule: True
    shell:
        "(python -m della aggregate --inputs {input.reference} --out {params.summary}"
        " && python -m della table --summary {params.summary} --table human_reference"
        " --out-prefix {params.out_prefix}) > {log} 2>&1"
