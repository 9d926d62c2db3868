# One job per (dataset, arch, method), every fold: it reads that pair's saliency tables.
rule saliency_change:
    input:
        saliency_files,
    output:
        "results/metrics/saliency_change/{dataset}/{arch}/{method}.parquet",
    log:
        "logs/saliency_change/{dataset}/{arch}/{method}.log",
    benchmark:
        "benchmarks/saliency_change/{dataset}/{arch}/{method}.tsv"
    conda:
        "../../envs/metrics.yaml"
    params:
        top_k_percent=config["metrics"]["top_k_percent"],
        multi_label=multi_label,
    script:
        "../scripts/saliency_change.py"


rule summarise:
    input:
        classification=classification_files,
        history=history_files,
        saliency_change=saliency_change_files,
    output:
        classification="results/summary/{dataset}/classification.parquet",
        training_history="results/summary/{dataset}/training_history.parquet",
        saliency_change="results/summary/{dataset}/saliency_change.parquet",
        detection="results/summary/{dataset}/misclassification_detection.parquet",
        severity_trends="results/summary/{dataset}/severity_trends.parquet",
        variance_decomposition="results/summary/{dataset}/variance_decomposition.parquet",
    log:
        "logs/summarise/{dataset}.log",
    benchmark:
        "benchmarks/summarise/{dataset}.tsv"
    conda:
        "../../envs/metrics.yaml"
    params:
        bootstrap=bootstrap_params,
    script:
        "../scripts/summarise.py"


rule summarise_classification:
    input:
        prediction_files,
    output:
        "results/summary/{dataset}/classification_summary.parquet",
    log:
        "logs/summarise_classification/{dataset}.log",
    benchmark:
        "benchmarks/summarise_classification/{dataset}.tsv"
    conda:
        "../../envs/metrics.yaml"
    params:
        bootstrap=bootstrap_params,
    script:
        "../scripts/summarise_classification.py"
