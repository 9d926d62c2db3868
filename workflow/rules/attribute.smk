rule attribute:
    input:
        data=dataset_file,
        model=model_file,
        perturbed=perturbed_files,
    output:
        "results/saliency/{dataset}/{arch}/fold{fold}/{method}.parquet",
    log:
        "logs/attribute/{dataset}/{arch}/fold{fold}/{method}.log",
    benchmark:
        "benchmarks/attribute/{dataset}/{arch}/fold{fold}/{method}.tsv"
    conda:
        "../../envs/attribute.yaml"
    threads: config["resources"]["attribute"]["threads"]
    resources:
        gpu=config["resources"]["attribute"]["gpus"],
    params:
        method_params=method_params,
        max_images=config["attribute"]["max_images"],
        batch_size=config["attribute"]["batch_size"],
        target=config["attribute"]["target"],
        top_k_targets=top_k_targets,
        seed=config["seed"],
        device=config["device"],
        ensembles=ENSEMBLES,
        weights=config["train"]["weights"],
    script:
        "../scripts/attribute.py"
