# The paper's analyses that need no extra training: Table 7 (statistics of every prepared dataset,
# sentence datasets first and then the conditional ones, as the paper lists them) and Fig. 3 (greedy
# text along the line between the posterior means of the first two test sentences, for every model
# with a latent; sentence datasets only, `interpolate` takes {split}.txt). Table 7 is a cheap local
# rule; Fig. 3 loads the model on the run's device, so it is a job with evaluate's resources.


def latent_models():
    """The config's model entries whose registry model has a latent (not the plain LM)."""
    from della.models import MODELS

    return [name for name, entry in config["models"].items() if MODELS.get(entry["model"]).has_latent]


rule table7:
    input:
        data=[split_file(dataset, "train") for dataset in LM_DATASETS + CONDITIONAL_DATASETS],
        tokenizers=expand(results("tokenizers/{dataset}/tokenizer-info.json"), dataset=LM_DATASETS + CONDITIONAL_DATASETS),
        code=[TABLES_CODE, str(REPO / "della" / "data" / "stats.py")],  # editing either reruns it
    output:
        **table_outputs("table7"),
    params:
        data=lambda wildcards, input: [Path(p).parent for p in input.data],
        tokenizers=lambda wildcards, input: [Path(p).parent for p in input.tokenizers],
        out_prefix=table_prefix,
    log:
        logs("table7.log"),
    localrule: True
    shell:
        "python -m della data-stats --data {params.data} --tokenizer {params.tokenizers}"
        " --out-prefix {params.out_prefix} > {log} 2>&1"


rule interpolation:
    input:
        run=f"{RUN_DIR}/run.json",
        test=results("data/{dataset}/test.txt"),
    output:
        md=results("figures/{dataset}/{model}/seed{seed}/interpolation.md"),
        html=report(
            results("figures/{dataset}/{model}/seed{seed}/interpolation.html"),
            caption="../report/interpolation.rst",
            category="Interpolation (Fig. 3)",
            subcategory="{dataset}",
            labels={"model": "{model}", "seed": "{seed}"},
        ),
    params:
        run_dir=lambda wildcards, input: Path(input.run).parent,
    log:
        logs("interpolation/{dataset}/{model}/seed{seed}.log"),
    threads: rule_threads("evaluate")
    resources:
        **rule_resources("evaluate"),
    shell:
        "python -m della interpolate --run {params.run_dir} --pair-from {input.test} --steps 10"
        " --out {output.md} > {log} 2>&1"


def della_entries():
    return [name for name, entry in config["models"].items() if entry["model"] == "della"]


rule layer_sweep:
    input:
        every_run(f"{RUN_DIR}/eval.json", models=della_entries()),
    output:
        report(results("figures/layer_sweep.svg"), caption="../report/layer_sweep.rst", category="Figures"),
    log:
        logs("layer_sweep.log"),
    localrule: True
    shell:
        "python -m della layer-sweep --evals {input} --out {output} > {log} 2>&1"
