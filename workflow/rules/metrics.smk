# One job per (dataset, arch, method), every fold: it reads that pair's saliency tables.
rule saliency_change:
    input:
        get_saliency_files,
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
        multi_label=get_multi_label,
    script:
        "../scripts/saliency_change.py"


rule summarise:
    input:
        classification=get_classification_files,
        history=get_history_files,
        saliency_change=get_saliency_change_files,
    output:
        classification=summary_table("classification"),
        training_history=summary_table("training_history"),
        saliency_change=summary_table("saliency_change"),
        detection=summary_table("misclassification_detection"),
        severity_trends=summary_table("severity_trends"),
        variance_decomposition=summary_table("variance_decomposition"),
    log:
        "logs/summarise/{dataset}.log",
    benchmark:
        "benchmarks/summarise/{dataset}.tsv"
    conda:
        "../../envs/metrics.yaml"
    params:
        bootstrap=get_bootstrap_settings,
    script:
        "../scripts/summarise.py"


rule summarise_classification:
    input:
        get_prediction_files,
    output:
        summary_table("classification_summary"),
    log:
        "logs/summarise_classification/{dataset}.log",
    benchmark:
        "benchmarks/summarise_classification/{dataset}.tsv"
    conda:
        "../../envs/metrics.yaml"
    params:
        bootstrap=get_bootstrap_settings,
    script:
        "../scripts/summarise_classification.py"
