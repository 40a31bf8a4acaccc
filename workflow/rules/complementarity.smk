# Where the gains are: every ordered pair scored from the eval logits, then the pairs to transfer.


rule complementarity:
    input:
        logits=get_logits("eval"),
    output:
        table=f"{RESULTS}/complementarity/pairs.parquet",
        per_class=f"{RESULTS}/complementarity/per_class.h5",
        heatmap=report(
            f"{RESULTS}/figures/flip_heatmap.png",
            caption="../report/flip_heatmap.rst",
            category="Complementarity",
        ),
        scatter=report(
            f"{RESULTS}/figures/knowledge_vs_accdiff.png",
            caption="../report/knowledge_vs_accdiff.rst",
            category="Complementarity",
        ),
    params:
        kt=KT,
        code=KT_CODE,
    log:
        f"{RESULTS}/logs/complementarity.log",
    benchmark:
        f"{RESULTS}/benchmarks/complementarity.tsv"
    conda:
        ENV
    threads: 2
    retries: 0  # not resumable: fails at once
    resources:
        mem_mb=complementarity_mb,
        runtime=complementarity_minutes,
    shell:
        "{params.kt} --threads {threads} complementarity --logits {input.logits} --out {output.table} "
        "--per-class {output.per_class} --heatmap {output.heatmap} --scatter {output.scatter} > {log} 2>&1"


checkpoint select_pairs:
    input:
        table=rules.complementarity.output.table,
    output:
        pairs=f"{RESULTS}/pairs.parquet",
    params:
        kt=KT,
        code=KT_CODE,
        policy=as_arg(config["select"]),
    log:
        f"{RESULTS}/logs/select.log",
    benchmark:
        f"{RESULTS}/benchmarks/select.tsv"
    conda:
        ENV
    threads: 1
    retries: 0  # not resumable: fails at once
    resources:
        mem_mb=kt_resources.SMALL_JOB["mem_mb"],
        runtime=kt_resources.SMALL_JOB["runtime"],
    shell:
        "{params.kt} select --table {input.table} --policy {params.policy} --out {output.pairs} > {log} 2>&1"
