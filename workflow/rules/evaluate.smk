# Metrics per transfer run, the summary over all runs, and its figures.


rule evaluate:
    input:
        before=RUN_OUTPUT["before"],
        after=RUN_OUTPUT["after"],
        config=RUN_OUTPUT["config"],
        teacher_logits=get_teacher_logits,
        control=get_control_logits,
    output:
        metrics=f"{RUN}/{RunFolder.EVALUATION}",
    params:
        kt=KT,
        code=KT_CODE,
        run_dir=get_run_dir,
        control=get_control_option,
        alpha=config["alpha"],
    log:
        f"{RESULTS}/logs/evaluate/{RUN_NAME}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{RUN_NAME}.tsv"
    conda:
        ENV
    threads: 1
    retries: 0  # not resumable: fails at once
    resources:
        mem_mb=kt_resources.SMALL_JOB["mem_mb"],
        runtime=kt_resources.SMALL_JOB["runtime"],
    shell:
        "{params.kt} evaluate --run {params.run_dir} --teacher-logits {input.teacher_logits} --strategy {wildcards.strategy} "
        "--teacher {wildcards.teacher} --student {wildcards.student} {params.control} --alpha {params.alpha} --out {output.metrics} > {log} 2>&1"


rule summarize:
    input:
        metrics=get_run_files(RunFolder.EVALUATION),
        epochs=get_run_files(RunFolder.OUTPUTS["metrics"]),
        pairs=rules.select_pairs.output.pairs,
    output:
        table=f"{RESULTS}/summary.parquet",
        overview=f"{RESULTS}/report/overview.csv",
        csv=report(f"{RESULTS}/summary.csv", caption="../report/summary.rst", category="Transfer"),
        figures=report(
            directory(f"{RESULTS}/figures/transfer"),
            patterns=["{name}.png"],
            caption="../report/transfer_figures.rst",
            category="Transfer",
        ),
        pair_curves=report(
            directory(f"{RESULTS}/figures/pair_curves"),
            patterns=["{teacher}__{student}.png"],
            caption="../report/pair_curves.rst",
            category="Training curves",
            subcategory="all strategies, by pair",
            labels={"teacher": "{teacher}", "student": "{student}"},
        ),
        run_curves=report(
            directory(f"{RESULTS}/figures/run_curves"),
            patterns=["{strategy}/seed{seed}/{teacher}__{student}.png"],
            caption="../report/run_curves.rst",
            category="Training curves",
            subcategory="runs of {strategy}",
            labels={"teacher": "{teacher}", "student": "{student}", "seed": "{seed}"},
        ),
    params:
        kt=KT,
        code=KT_CODE,
        similar_within=config["select"]["similar_within"],
    log:
        f"{RESULTS}/logs/summarize.log",
    benchmark:
        f"{RESULTS}/benchmarks/summarize.tsv"
    conda:
        ENV
    threads: 1
    retries: 0  # not resumable: fails at once
    resources:
        mem_mb=kt_resources.SMALL_JOB["mem_mb"],
        runtime=kt_resources.SMALL_JOB["runtime"],
    shell:
        "{params.kt} summarize --metrics {input.metrics} --epochs {input.epochs} --pairs {input.pairs} --similar-within {params.similar_within} "
        "--out {output.table} --csv {output.csv} --overview {output.overview} --figures {output.figures} "
        "--pair-curves {output.pair_curves} --run-curves {output.run_curves} > {log} 2>&1"
