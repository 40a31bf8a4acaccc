# Multi-teacher transfer: one student, a group of teachers, three modes (kt/multi.py). Each mode
# writes the same run folder as a single-teacher transfer, with the group in the teacher position.


rule multi_transfer:
    wildcard_constraints:
        strategy=one_of(RUN_MODES),
        teacher=one_of(GROUPS),
    input:
        teachers=get_group_files,
        student=get_model_files("student"),
        teacher_logits=get_teacher_logits,
        extracted=f"{RESULTS}/logits/eval/{{student}}.h5",
    output:
        **RUN_OUTPUT,
    params:
        kt=KT,
        code=get_code("teacher", "student", strategy=MULTI["strategy"]),
        teachers=get_group_specs,
        student=get_spec("student"),
        dataset=get_dataset,
        settings=get_settings(MULTI["strategy"]),
        strategy=MULTI["strategy"],
        order=MULTI["order"],
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
        "{params.kt} --threads {threads} multi-transfer --mode {wildcards.strategy} --group {wildcards.teacher} "
        "--teachers {params.teachers} --teacher-logits {input.teacher_logits} --order {params.order} "
        "--student {params.student} --strategy {params.strategy} --dataset {params.dataset} "
        "--settings {params.settings} --before {input.extracted} --out {params.run_dir} > {log} 2>&1"


rule soup:
    wildcard_constraints:
        strategy=SOUP,
        teacher=one_of(GROUPS),
    input:
        members=get_member_files(RunFolder.OUTPUTS["weights"]),
        configs=get_member_files(RunFolder.OUTPUTS["config"]),
    output:
        **RUN_OUTPUT,
    params:
        kt=KT,
        code=get_code("student", strategy=""),
        members=get_member_dirs,
        dataset=get_dataset,
        settings=get_settings(MULTI["strategy"]),
        batchnorm=MULTI["soup_batchnorm"],
        run_dir=get_run_dir,
    log:
        f"{RESULTS}/logs/transfer/{RUN_NAME}.log",
    benchmark:
        f"{RESULTS}/benchmarks/transfer/{RUN_NAME}.tsv"
    conda:
        ENV
    threads: TRANSFER_THREADS
    retries: 0  # not resumable (cheap): fails at once
    resources:
        mem_mb=memory_of(lambda w: [], lambda w: [w.student] * len(group_teachers(w.teacher)), "transfer"),
        runtime=runtime_of(soup_seconds),
        gpu=1,
    shell:
        "{params.kt} --threads {threads} soup --members {params.members} --group {wildcards.teacher} "
        "--dataset {params.dataset} --settings {params.settings} --batchnorm {params.batchnorm} "
        "--out {params.run_dir} > {log} 2>&1"
