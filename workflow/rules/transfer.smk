# Transfer: one job per (strategy, teacher, student); the frozen-output cache is shared per pair.


rule cache_frozen:
    wildcard_constraints:
        teacher=one_of(MODELS),
    input:
        teacher=get_model_files("teacher"),
        student=get_model_files("student"),
    output:
        cache=CACHE,
    params:
        kt=KT,
        code=get_code("teacher", "student"),
        teacher=get_spec("teacher"),
        student=get_spec("student"),
        dataset=get_dataset,
        settings=get_settings(run=False),
    log:
        f"{RESULTS}/logs/cache/{{teacher}}__{{student}}{CACHE_SEED_PART}.log",
    benchmark:
        f"{RESULTS}/benchmarks/cache/{{teacher}}__{{student}}{CACHE_SEED_PART}.tsv"
    conda:
        ENV
    threads: TRANSFER_THREADS
    resources:
        mem_mb=memory_of(lambda w: [], lambda w: [w.teacher, w.student], "transfer"),
        runtime=runtime_of(cache_seconds),
        gpu=1,
    shell:
        "{params.kt} --threads {threads} cache-frozen --teacher {params.teacher} --student {params.student} "
        "--dataset {params.dataset} --settings {params.settings} --out {output.cache} > {log} 2>&1"


rule transfer:
    wildcard_constraints:
        strategy=one_of(dict.fromkeys([*STRATEGIES, MULTI["strategy"]])),
        teacher=one_of([*MODELS, NO_TEACHER]),
    input:
        teacher=get_model_files("teacher"),
        student=get_model_files("student"),
        cache=get_cache,
        extracted=f"{RESULTS}/logits/eval/{{student}}.h5",
    output:
        **RUN_OUTPUT,
    params:
        kt=KT,
        code=get_code("teacher", "student"),
        teacher=get_teacher_option,
        student=get_spec("student"),
        dataset=get_dataset,
        settings=get_settings(),
        cache=get_cache_option,
        run_dir=get_run_dir,
    log:
        f"{RESULTS}/logs/transfer/{RUN_NAME}.log",
    benchmark:
        f"{RESULTS}/benchmarks/transfer/{RUN_NAME}.tsv"
    conda:
        ENV
    threads: TRANSFER_THREADS
    resources:
        mem_mb=memory_of(run_learners, run_frozen, "transfer"),
        runtime=runtime_of(transfer_seconds),
        gpu=1,
    shell:
        "{params.kt} --threads {threads} transfer {params.teacher} --student {params.student} "
        "--strategy {wildcards.strategy} --dataset {params.dataset} --settings {params.settings} "
        "{params.cache} --before {input.extracted} --out {params.run_dir} > {log} 2>&1"
