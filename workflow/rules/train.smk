rule train:
    input:
        data=get_dataset_file,
        folds=FOLDS_TABLE,
    output:
        model=MODEL_WEIGHTS,
        history="results/models/{dataset}/{arch}/fold{fold}/history.parquet",
        metrics="results/models/{dataset}/{arch}/fold{fold}/train_metrics.json",
    log:
        "logs/train/{dataset}/{arch}/fold{fold}.log",
    benchmark:
        "benchmarks/train/{dataset}/{arch}/fold{fold}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: config["resources"]["train"]["threads"]
    resources:
        gpu=config["resources"]["train"]["gpus"],
    params:
        train=get_train_settings,
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/train.py"
