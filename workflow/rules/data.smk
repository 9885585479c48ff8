# Corpus -> results/<experiment>/data/{dataset}/ ; its train split -> results/<experiment>/tokenizers/{dataset}/.
# Both are local rules: they are cheap, and a Hugging Face dataset or pretrained tokenizer may
# need the network, which a cluster's login node has and its compute nodes often do not.
# A sentence (lm) dataset is prepared as {split}.txt by prepare_data, a conditional one as
# {split}.jsonl (source/target pairs) by prepare_conditional_data: the same command, told apart by
# the dataset wildcard (outputs cannot be input functions).


rule prepare_data:
    input:
        prepare_inputs,
    output:
        train=results("data/{dataset}/train.txt"),
        valid=results("data/{dataset}/valid.txt"),
        test=results("data/{dataset}/test.txt"),
        report=results("data/{dataset}/prepare.json"),
    wildcard_constraints:
        dataset=one_of(LM_DATASETS),
    params:
        args=prepare_args,
        out=lambda wildcards, output: Path(output.train).parent,
    log:
        logs("prepare_data/{dataset}.log"),
    localrule: True
    shell:
        "python -m della prepare-data {params.args} --out {params.out} > {log} 2>&1"


use rule prepare_data as prepare_conditional_data with:
    output:
        train=results("data/{dataset}/train.jsonl"),
        valid=results("data/{dataset}/valid.jsonl"),
        test=results("data/{dataset}/test.jsonl"),
        report=results("data/{dataset}/prepare.json"),
    wildcard_constraints:
        dataset=one_of(CONDITIONAL_DATASETS),
    localrule: True  # `use rule` does not carry it over


rule tokenizer:
    input:
        train_split,
    output:
        results("tokenizers/{dataset}/tokenizer-info.json"),
    params:
        args=tokenizer_args,
        data=lambda wildcards, input: Path(input[0]).parent,
        out=lambda wildcards, output: Path(output[0]).parent,
    log:
        logs("tokenizer/{dataset}.log"),
    localrule: True
    shell:
        "python -m della tokenizer --data {params.data} {params.args} --out {params.out} > {log} 2>&1"
