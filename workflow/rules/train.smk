rule train:
    input:
        data=dataset_file,
        folds="results/folds/{dataset}.parquet",
    output:
        model="results/models/{dataset}/{arch}/fold{fold}/model.pt",
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
        train=train_settings,
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/train.py"
