# Logits (and optionally pooled features) of every model on every split it is needed for.


rule extract:
    input:
        weights=weights_of("model"),
        sizes=sizes_input,
    output:
        logits=f"{RESULTS}/logits/{{split}}/{{model}}.h5",
    params:
        kt=KT,
        code=code_of("model"),
        model=spec_of("model"),
        dataset=dataset_arg,
        batch_size=config["extract"]["batch_size"],
        workers=config["extract"]["workers"],
        dtype=config["extract"]["dtype"],
        features="--features" if config["extract"]["features"] else "",
        device=config["device"],
        decode=config["decode"],
    log:
        f"{RESULTS}/logs/extract/{{split}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract/{{split}}/{{model}}.tsv"
    conda:
        ENV
    threads: EXTRACT_THREADS
    retries: 0  # not resumable: fails at once
    resources:
        mem_mb=memory_of(lambda w: [], the("model"), "extract"),
        runtime=runtime_of(extract_seconds),
        gpu=1,
    shell:
        "{params.kt} --threads {threads} extract --model {params.model} "
        "--dataset {params.dataset} --split {wildcards.split} --batch-size {params.batch_size} "
        "--workers {params.workers} --dtype {params.dtype} --device {params.device} {params.features} "
        "--decode {params.decode} --out {output.logits} > {log} 2>&1"


localrules: model_sizes  # meta-device models: seconds, no data; not worth a cluster job


rule model_sizes:
    output:
        sizes=MODEL_SIZES,
    params:
        kt=KT,
        code=KT_CODE,
        models=lambda wildcards: as_arg({m: MODELS[m].to_dict() for m in SIZED}),
    log:
        f"{RESULTS}/logs/model_sizes.log",
    benchmark:
        f"{RESULTS}/benchmarks/model_sizes.tsv"
    conda:
        ENV
    threads: 1
    retries: 0  # not resumable: fails at once
    resources:
        mem_mb=2000,
        runtime=lambda wildcards: 10 + len(SIZED) // 100,  # ~0.3 s a model on the meta device
    shell:
        "{params.kt} --threads {threads} model-sizes --models {params.models} --out {output.sizes} > {log} 2>&1"


rule zero_shot_head:
    wildcard_constraints:
        model=one_of(HEADS),
    output:
        head=f"{RESULTS}/heads/{{model}}.h5",
    params:
        kt=KT,
        code=code_of("model"),
        model=lambda wildcards: as_arg(HEAD_SPECS[wildcards.model].to_dict()),
        dataset=dataset_arg,
        device=config["device"],
    log:
        f"{RESULTS}/logs/heads/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/heads/{{model}}.tsv"
    conda:
        ENV
    threads: 1
    retries: 0  # not resumable: fails at once
    resources:
        mem_mb=memory_of(lambda w: [], the("model"), "extract"),
        runtime=runtime_of(head_seconds),
        gpu=1,
    shell:
        "{params.kt} --threads {threads} zero-shot-head --model {params.model} --dataset {params.dataset} "
        "--device {params.device} --out {output.head} > {log} 2>&1"
