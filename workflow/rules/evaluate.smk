rule evaluate:
    input:
        data=dataset_file,
        model=model_file,
        perturbed=perturbed_files,
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
        members=ensemble_members,
    script:
        "../scripts/evaluate.py"
