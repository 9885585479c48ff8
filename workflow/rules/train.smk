# The run config (the only place it is built), then one training run per (dataset, model, seed).


rule run_config:
    output:
        f"{RUN_DIR}/config.yaml",
    params:
        run=run_config,  # a config change reruns the run and everything after it
    log:
        "logs/run_config/{dataset}/{model}/seed{seed}.log",
    localrule: True
    run:
        write_run_config(params.run, output[0], log[0])


rule train:
    input:
        config=f"{RUN_DIR}/config.yaml",
        data=multiext("results/data/{dataset}/", "train.txt", "valid.txt"),
        tokenizer="results/tokenizers/{dataset}/tokenizer-info.json",
    output:
        f"{RUN_DIR}/run.json",  # written last, after the final checkpoint
    params:
        run_dir=run_dir,
        launcher=train_launcher(),
    log:
        "logs/train/{dataset}/{model}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train/{dataset}/{model}/seed{seed}.jsonl"
    threads: rule_threads("train")
    resources:
        **rule_resources("train"),
    shell:
        "{params.launcher} -m della train --config {input.config} --out {params.run_dir} > {log} 2>&1"
