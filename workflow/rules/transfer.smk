# Transfer: one job per (strategy, teacher, student); the frozen-output cache is shared per pair.


rule cache_frozen:
    input:
        teacher=weights_of("teacher"),
        student=weights_of("student"),
    output:
        cache=f"{RESULTS}/transfer/cache/{{teacher}}__{{student}}.h5",
    params:
        kt=KT,
        teacher=spec_of("teacher"),
        student=spec_of("student"),
        dataset=dataset_arg,
        settings=settings_arg(None),
    log:
        f"{RESULTS}/logs/cache/{{teacher}}__{{student}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/cache/{{teacher}}__{{student}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=1,
    shell:
        "{params.kt} --threads {threads} cache-frozen --teacher {params.teacher} --student {params.student} "
        "--dataset {params.dataset} --settings {params.settings} --out {output.cache} > {log} 2>&1"


rule transfer:
    wildcard_constraints:
        strategy=one_of(dict.fromkeys([*STRATEGIES, MULTI["strategy"]])),
        teacher=one_of(MODELS),
    input:
        teacher=weights_of("teacher"),
        student=weights_of("student"),
        cache=frozen_cache,
        extracted=f"{RESULTS}/logits/eval/{{student}}.h5",
    output:
        **RUN_OUTPUT,
    params:
        kt=KT,
        teacher=spec_of("teacher"),
        student=spec_of("student"),
        dataset=dataset_arg,
        settings=strategy_settings,
        cache=cache_option,
        run_dir=run_dir,
    log:
        f"{RESULTS}/logs/transfer/{{strategy}}/{{teacher}}__{{student}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/transfer/{{strategy}}/{{teacher}}__{{student}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=1,
    shell:
        "{params.kt} --threads {threads} transfer --teacher {params.teacher} --student {params.student} "
        "--strategy {wildcards.strategy} --dataset {params.dataset} --settings {params.settings} "
        "{params.cache} --before {input.extracted} --out {params.run_dir} > {log} 2>&1"
