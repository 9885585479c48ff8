# From a trained run: representation metrics, samples, and text metrics on the samples.


rule evaluate:
    input:
        run=f"{RUN_DIR}/run.json",
        test=test_split,
    output:
        f"{RUN_DIR}/eval.json",
    params:
        run_dir=run_dir,
    log:
        logs("evaluate/{dataset}/{model}/seed{seed}.log"),
    benchmark:
        results("benchmarks/evaluate/{dataset}/{model}/seed{seed}.jsonl")
    threads: rule_threads("evaluate")
    resources:
        **rule_resources("evaluate"),
    shell:
        "python -m della evaluate --run {params.run_dir} --split test --out {output} > {log} 2>&1"


rule generate:
    input:
        f"{RUN_DIR}/run.json",
    output:
        f"{RUN_DIR}/samples.txt",
    params:
        run_dir=run_dir,
    log:
        logs("generate/{dataset}/{model}/seed{seed}.log"),
    benchmark:
        results("benchmarks/generate/{dataset}/{model}/seed{seed}.jsonl")
    threads: rule_threads("generate")
    resources:
        **rule_resources("generate"),
    shell:
        "python -m della generate --run {params.run_dir} --out {output} > {log} 2>&1"


rule text_metrics:
    input:
        samples=f"{RUN_DIR}/samples.txt",
        references=test_split,  # test.jsonl: the targets (metrics/inputs.py reads its field `target`)
        mauve_features=feature_lm_input,
    output:
        f"{RUN_DIR}/metrics.json",
    params:
        metric_args=text_metrics_args,
    log:
        logs("text_metrics/{dataset}/{model}/seed{seed}.log"),
    threads: rule_threads("text_metrics")
    resources:
        **rule_resources("text_metrics"),
    shell:
        "python -m metrics compute --samples {input.samples} --references {input.references}"
        " {params.metric_args} --threads {threads} --out {output} > {log} 2>&1"


# MAUVE's features on a sentence dataset (config `mauve_encoder: lm`): the dataset's own plain
# GPT-2 LM, exported as a Hugging Face directory that metrics/encoders.py loads offline.
rule feature_lm:
    input:
        lambda wildcards: f"{feature_lm_run(wildcards.dataset)}/run.json",
    output:
        results("encoders/{dataset}/della-export.json"),
    params:
        run_dir=lambda wildcards, input: str(Path(input[0]).parent),
        out=lambda wildcards, output: str(Path(output[0]).parent),
    log:
        logs("feature_lm/{dataset}.log"),
    localrule: True
    shell:
        "python -m della export-lm --run {params.run_dir} --out {params.out} > {log} 2>&1"
