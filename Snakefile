# Snakefile (repo root): thin entry point; the workflow lives in workflow/Snakefile
include: "workflow/Snakefile"

rule default:
    default_target: True
    input:
        rules.all.input,
