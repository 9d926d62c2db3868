rule localisation:
    input:
        saliency=get_saliency_files,
        data=get_dataset_file,
    output:
        "results/localisation/{dataset}/{arch}/{method}.parquet",
    log:
        "logs/localisation/{dataset}/{arch}/{method}.log",
    benchmark:
        "benchmarks/localisation/{dataset}/{arch}/{method}.tsv"
    conda:
        "../../envs/metrics.yaml"
    params:
        top_k_percent=config["metrics"]["top_k_percent"],
        graded_hit=config["localisation"],
    script:
        "../scripts/localisation.py"


rule summarise_localisation:
    input:
        get_localisation_files,
    output:
        summary_table("localisation"),
    log:
        "logs/summarise_localisation/{dataset}.log",
    benchmark:
        "benchmarks/summarise_localisation/{dataset}.tsv"
    conda:
        "../../envs/metrics.yaml"
    params:
        bootstrap=get_bootstrap_settings,
    script:
        "../scripts/summarise_localisation.py"
