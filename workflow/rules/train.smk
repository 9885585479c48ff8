# The run config (the only place it is built), then one training run per (dataset, model, seed).
# Any run config change reruns `train`; inside it the checkpoints' fingerprint decides what is reused
# (README "Resuming"): a finished run of the same training recipe only rewrites run.json. (An
# `ancient` config input with the recipe as a param would spare that job, but Snakemake 9 skips the
# params check of a job whose ancient input's producer reruns, so a changed recipe would not retrain.)


rule run_config:
    output:
        f"{RUN_DIR}/config.yaml",
    params:
        resolved=run_config_json,  # a config change reruns the run and everything after it
    log:
        logs("run_config/{dataset}/{model}/seed{seed}.log"),
    localrule: True
    shell:  # a shell rule, not `run:`: Snakemake records run: jobs with a negative runtime
        "python -m della run-config --resolved {params.resolved:q} --out {output} > {log} 2>&1"


rule train:
    input:
        config=f"{RUN_DIR}/config.yaml",
        data=training_splits,  # {train,valid}.txt, or .jsonl on a conditional dataset
        tokenizer=results("tokenizers/{dataset}/tokenizer-info.json"),
    output:
        f"{RUN_DIR}/run.json",  # written last, after the final checkpoint
    params:
        run_dir=run_dir,
        launcher=train_launcher,
    log:
        logs("train/{dataset}/{model}/seed{seed}.log"),
    benchmark:
        results("benchmarks/train/{dataset}/{model}/seed{seed}.jsonl")
    threads: rule_threads("train")
    resources:
        **rule_resources("train"),
    shell:  # the full log (tqdm bar included) goes to {log}; the per-epoch progress lines to the terminal
        "{params.launcher} -m della train --config {input.config} --out {params.run_dir} 2>&1 | tee {log}"
        " | awk '/ progress / {{sub(/.*\\r/, \"\"); print; fflush()}}'"
