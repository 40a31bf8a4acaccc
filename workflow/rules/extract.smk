# Logits (and optionally pooled features) of every model on every split it is needed for.


rule extract:
    input:
        weights=get_model_files("model"),
        sizes=get_model_sizes,
    output:
        logits=f"{RESULTS}/logits/{{split}}/{{model}}.h5",
    params:
        kt=KT,
        code=get_code("model"),
        model=get_spec("model"),
        dataset=get_dataset,
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
        mem_mb=kt_resources.SMALL_JOB["mem_mb"],
        runtime=lambda wildcards: kt_resources.model_sizes_minutes(len(SIZED)),
    shell:
        "{params.kt} --threads {threads} model-sizes --models {params.models} --out {output.sizes} > {log} 2>&1"


rule prepare_model:
    wildcard_constraints:
        model=one_of(PREPARED),
    output:
        prepared=f"{RESULTS}/prepared/{{model}}.h5",
    params:
        kt=KT,
        code=get_code("model"),
        model=lambda wildcards: as_arg(UNPREPARED[wildcards.model].to_dict()),
        dataset=get_dataset,
        device=config["device"],
    log:
        f"{RESULTS}/logs/prepared/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepared/{{model}}.tsv"
    conda:
        ENV
    threads: 1
    retries: 0  # not resumable: fails at once
    resources:
        mem_mb=memory_of(lambda w: [], the("model"), "extract"),
        runtime=runtime_of(prepare_seconds),
        gpu=1,
    shell:
        "{params.kt} --threads {threads} prepare --model {params.model} --dataset {params.dataset} "
        "--device {params.device} --out {output.prepared} > {log} 2>&1"
