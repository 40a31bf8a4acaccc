# The zoo: small diverse models trained from scratch; their checkpoints become local weight files.


rule train_zoo:
    output:
        weights=f"{RESULTS}/zoo/{{zoo_model}}.pth",
    params:
        kt=KT,
        code=get_code("zoo_model"),
        model=get_zoo_spec,
        dataset=get_zoo_dataset,
        epochs=get_zoo_setting("epochs"),
        lr=get_zoo_setting("lr"),
        augment=get_zoo_setting("augment"),
        seed=get_zoo_setting("seed"),
        batch_size=config["zoo"]["batch_size"],
    log:
        f"{RESULTS}/logs/zoo/{{zoo_model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/zoo/{{zoo_model}}.tsv"
    conda:
        ENV
    threads: 1
    retries: 0  # not resumable: fails at once
    resources:
        mem_mb=kt_resources.ZOO_JOB["mem_mb"],
        runtime=kt_resources.ZOO_JOB["runtime"],
    shell:
        "{params.kt} --threads {threads} train-zoo --model {params.model} "
        "--dataset {params.dataset} --epochs {params.epochs} --lr {params.lr} --augment {params.augment} "
        "--seed {params.seed} --batch-size {params.batch_size} --out {output.weights} > {log} 2>&1"
