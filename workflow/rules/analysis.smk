# Saliency analysis (issue 8): agreement between models, faithfulness, randomisation sanity
# checks and misclassification detection per perturbation family. analysis.run selects the
# families that rule all builds.


# Like attribution, one job per (dataset, arch, method) covers every fold's model.
rule faithfulness:
    input:
        saliency=get_saliency_files,
        data=get_dataset_file,
        models=get_fold_model_files,
        perturbed=get_perturbed_files,
    output:
        "results/faithfulness/{dataset}/{arch}/{method}.parquet",
    log:
        "logs/faithfulness/{dataset}/{arch}/{method}.log",
    benchmark:
        "benchmarks/faithfulness/{dataset}/{arch}/{method}.tsv"
    conda:
        "../../envs/attribute.yaml"
    threads: config["resources"]["attribute"]["threads"]
    resources:
        gpu=config["resources"]["attribute"]["gpus"],
    params:
        settings=get_faithfulness_settings,
        members=get_ensemble_members,
        method_params=get_method_params,
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/faithfulness.py"


rule summarise_faithfulness:
    input:
        get_faithfulness_files,
    output:
        summary=summary_table("faithfulness"),
        over_folds=summary_table("faithfulness_over_folds"),
    log:
        "logs/summarise_faithfulness/{dataset}.log",
    benchmark:
        "benchmarks/summarise_faithfulness/{dataset}.tsv"
    conda:
        "../../envs/metrics.yaml"
    params:
        bootstrap=get_bootstrap_settings,
    script:
        "../scripts/summarise_faithfulness.py"


rule sanity:
    input:
        # the clean maps fix the images and targets; perturbed maps are not read
        saliency=get_clean_saliency_file,
        data=get_dataset_file,
        model=get_model_files,
    output:
        "results/sanity/{dataset}/{arch}/fold{fold}/{method}.parquet",
    log:
        "logs/sanity/{dataset}/{arch}/fold{fold}/{method}.log",
    benchmark:
        "benchmarks/sanity/{dataset}/{arch}/fold{fold}/{method}.tsv"
    conda:
        "../../envs/attribute.yaml"
    threads: config["resources"]["attribute"]["threads"]
    resources:
        gpu=config["resources"]["attribute"]["gpus"],
    params:
        # only the keys the job uses: pass_threshold changes the summary alone
        max_images=config["analysis"]["sanity"]["max_images"],
        granularity=config["analysis"]["sanity"]["granularity"],
        method_params=get_method_params,
        batch_size=config["attribute"]["batch_size"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/sanity.py"


rule summarise_sanity:
    input:
        get_sanity_files,
    output:
        summary_table("sanity"),
    log:
        "logs/summarise_sanity/{dataset}.log",
    benchmark:
        "benchmarks/summarise_sanity/{dataset}.tsv"
    conda:
        "../../envs/metrics.yaml"
    params:
        pass_threshold=config["analysis"]["sanity"]["pass_threshold"],
    script:
        "../scripts/summarise_sanity.py"


rule agreement:
    input:
        get_agreement_files,
    output:
        summary_table("agreement"),
    log:
        "logs/agreement/{dataset}.log",
    benchmark:
        "benchmarks/agreement/{dataset}.tsv"
    conda:
        "../../envs/metrics.yaml"
    params:
        top_k_percent=config["metrics"]["top_k_percent"],
        same_target_only=config["analysis"]["agreement"]["same_target_only"],
        bootstrap=get_bootstrap_settings,
    script:
        "../scripts/agreement.py"


rule detection_by_family:
    input:
        get_saliency_change_files,
    output:
        detection=summary_table("detection_by_family"),
        method_comparison=summary_table("method_comparison"),
    log:
        "logs/detection_by_family/{dataset}.log",
    benchmark:
        "benchmarks/detection_by_family/{dataset}.tsv"
    conda:
        "../../envs/metrics.yaml"
    params:
        cv_folds=config["analysis"]["detection"]["cv_folds"],
        bootstrap=get_bootstrap_settings,
    script:
        "../scripts/detection.py"


rule findings:
    input:
        detection=summary_table("detection_by_family"),
        method_comparison=summary_table("method_comparison"),
        saliency_change=summary_table("saliency_change"),
        severity_trends=summary_table("severity_trends"),
        variance_decomposition=summary_table("variance_decomposition"),
    output:
        table=summary_table("findings"),
        csv="results/summary/{dataset}/findings.csv",
        page=report(
            "results/summary/{dataset}/findings.html",
            caption="../report/findings.rst",
            category="Findings",
            labels={"dataset": "{dataset}", "figure": "headline findings"},
        ),
    log:
        "logs/findings/{dataset}.log",
    benchmark:
        "benchmarks/findings/{dataset}.tsv"
    conda:
        "../../envs/metrics.yaml"
    params:
        methods=METHODS,
        confidence=config["metrics"]["confidence"],
    script:
        "../scripts/findings.py"


rule train_shuffled_labels:
    input:
        data=get_dataset_file,
        folds=FOLDS_TABLE,
    output:
        "results/models/{dataset}/{arch}/fold{fold}/shuffled_labels.pt",
    log:
        "logs/train_shuffled_labels/{dataset}/{arch}/fold{fold}.log",
    benchmark:
        "benchmarks/train_shuffled_labels/{dataset}/{arch}/fold{fold}.tsv"
    conda:
        "../../envs/attribute.yaml"
    threads: config["resources"]["train"]["threads"]
    resources:
        gpu=config["resources"]["train"]["gpus"],
    params:
        train=get_train_settings,
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/train_shuffled_labels.py"


rule sanity_data:
    input:
        saliency=get_clean_saliency_file,
        data=get_dataset_file,
        model=get_model_files,
        shuffled_model="results/models/{dataset}/{arch}/fold{fold}/shuffled_labels.pt",
    output:
        "results/sanity_data/{dataset}/{arch}/fold{fold}/{method}.parquet",
    log:
        "logs/sanity_data/{dataset}/{arch}/fold{fold}/{method}.log",
    benchmark:
        "benchmarks/sanity_data/{dataset}/{arch}/fold{fold}/{method}.tsv"
    conda:
        "../../envs/attribute.yaml"
    threads: config["resources"]["attribute"]["threads"]
    resources:
        gpu=config["resources"]["attribute"]["gpus"],
    params:
        max_images=config["analysis"]["sanity"]["max_images"],
        method_params=get_method_params,
        batch_size=config["attribute"]["batch_size"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/sanity.py"
