# Figures and pages for `snakemake --report results/report.html` (workflow/report/*.rst captions):
# learning curves and a samples page per run, one provenance page for all runs. Cheap: local rules.


rule learning_curves:
    input:
        f"{RUN_DIR}/run.json",  # written after the last line of train-log.jsonl
    output:
        report(
            FIGURE,
            caption="../report/learning_curves.rst",
            category="Learning curves",
            subcategory="{dataset}",
            labels={"model": "{model}", "seed": "{seed}"},
        ),
    params:
        train_log=f"{RUN_DIR}/train-log.jsonl",
    log:
        logs("learning_curves/{dataset}/{model}/seed{seed}.log"),
    localrule: True
    shell:
        "python -m della curves --train-log {params.train_log} --title '{wildcards.dataset} / {wildcards.model}"
        " / seed {wildcards.seed}' --out {output} > {log} 2>&1"


rule samples_page:
    input:
        f"{RUN_DIR}/samples.txt",  # samples.json is written before it
    output:
        report(
            f"{RUN_DIR}/samples.html",
            caption="../report/samples.rst",
            category="Samples",
            subcategory="{dataset}",
            labels={"model": "{model}", "seed": "{seed}"},
        ),
    log:
        logs("samples_page/{dataset}/{model}/seed{seed}.log"),
    localrule: True
    shell:
        "python -m della samples-page --samples {input} --title 'Samples: {wildcards.dataset} / {wildcards.model}"
        " / seed {wildcards.seed}' --out {output} > {log} 2>&1"


rule provenance:
    input:
        every_run(f"{RUN_DIR}/run.json"),
    output:
        report(results("provenance.html"), caption="../report/provenance.rst", category="Provenance"),
    log:
        logs("provenance.log"),
    localrule: True
    shell:
        "python -m della provenance --runs {input} --out {output} > {log} 2>&1"
