rule localisation:
    input:
        saliency=saliency_files,
        data=dataset_file,
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
        localisation_files,
    output:
        "results/summary/{dataset}/localisation.parquet",
    log:
        "logs/summarise_localisation/{dataset}.log",
    benchmark:
        "benchmarks/summarise_localisation/{dataset}.tsv"
    conda:
        "../../envs/metrics.yaml"
    params:
        bootstrap=bootstrap_params,
    script:
        "../scripts/summarise_localisation.py"


rule plot_localisation:
    input:
        "results/summary/{dataset}/localisation.parquet",
    output:
        report(
            "results/plots/{dataset}/localisation.png",
            caption="../report/localisation.rst",
            category="Localisation",
            labels={"dataset": "{dataset}", "figure": "localisation vs severity"},
        ),
    log:
        "logs/plots/{dataset}/localisation.log",
    benchmark:
        "benchmarks/plots/{dataset}/localisation.tsv"
    conda:
        "../../envs/plots.yaml"
    params:
        dpi=config["plots"]["dpi"],
    script:
        "../scripts/plot_localisation.py"
