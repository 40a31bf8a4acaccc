# The zoo: small diverse models trained from scratch; their checkpoints become local weight files.


rule train_zoo:
    output:
        weights=f"{RESULTS}/zoo/{{zoo_model}}.pth",
    params:
        kt=KT,
        code=code_of("zoo_model"),
        model=zoo_model_arg,
        dataset=zoo_dataset_arg,
        epochs=zoo_setting("epochs"),
        lr=zoo_setting("lr"),
        augment=zoo_setting("augment"),
        seed=zoo_setting("seed"),
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
        mem_mb=2000,
        runtime=60,
    shell:
        "{params.kt} --threads {threads} train-zoo --model {params.model} "
        "--dataset {params.dataset} --epochs {params.epochs} --lr {params.lr} --augment {params.augment} "
        "--seed {params.seed} --batch-size {params.batch_size} --out {output.weights} > {log} 2>&1"
