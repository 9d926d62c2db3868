rule evaluate:
    input:
        data=get_dataset_file,
        model=get_model_files,
        perturbed=get_perturbed_files,
    output:
        predictions="results/evaluation/{dataset}/{arch}/fold{fold}/predictions.parquet",
        metrics="results/evaluation/{dataset}/{arch}/fold{fold}/metrics.parquet",
    log:
        "logs/evaluate/{dataset}/{arch}/fold{fold}.log",
    benchmark:
        "benchmarks/evaluate/{dataset}/{arch}/fold{fold}.tsv"
    conda:
        "../../envs/evaluate.yaml"
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        gpu=config["resources"]["evaluate"]["gpus"],
    params:
        batch_size=config["evaluate"]["batch_size"],
        device=config["device"],
        members=get_ensemble_members,
    script:
        "../scripts/evaluate.py"
