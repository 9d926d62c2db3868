# Saliency analysis (issue 8): agreement between models, faithfulness, randomisation sanity
# checks and misclassification detection per perturbation family. analysis.run selects the
# families that rule all builds.


# Like attribution, one job per (dataset, arch, method) covers every fold's model.
rule faithfulness:
    input:
        saliency=saliency_files,
        data=dataset_file,
        models=fold_model_files,
        perturbed=perturbed_files,
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
        settings=faithfulness_settings,
        members=ensemble_members,
        method_params=method_params,
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/faithfulness.py"


rule summarise_faithfulness:
    input:
        faithfulness_files,
    output:
        summary="results/summary/{dataset}/faithfulness.parquet",
        over_folds="results/summary/{dataset}/faithfulness_over_folds.parquet",
    log:
        "logs/summarise_faithfulness/{dataset}.log",
    benchmark:
        "benchmarks/summarise_faithfulness/{dataset}.tsv"
    conda:
        "../../envs/attribute.yaml"
    params:
        bootstrap=bootstrap_params,
    script:
        "../scripts/summarise_faithfulness.py"


rule sanity:
    input:
        # the clean maps fix the images and targets; perturbed maps are not read
        saliency=clean_saliency_file,
        data=dataset_file,
        model=model_file,
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
        method_params=method_params,
        batch_size=config["attribute"]["batch_size"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/sanity.py"


rule summarise_sanity:
    input:
        sanity_files,
    output:
        "results/summary/{dataset}/sanity.parquet",
    log:
        "logs/summarise_sanity/{dataset}.log",
    benchmark:
        "benchmarks/summarise_sanity/{dataset}.tsv"
    conda:
        "../../envs/attribute.yaml"
    params:
        pass_threshold=config["analysis"]["sanity"]["pass_threshold"],
    script:
        "../scripts/summarise_sanity.py"


rule agreement:
    input:
        agreement_files,
    output:
        "results/summary/{dataset}/agreement.parquet",
    log:
        "logs/agreement/{dataset}.log",
    benchmark:
        "benchmarks/agreement/{dataset}.tsv"
    conda:
        "../../envs/metrics.yaml"
    params:
        top_k_percent=config["metrics"]["top_k_percent"],
        same_target_only=config["analysis"]["agreement"]["same_target_only"],
        bootstrap=bootstrap_params,
    script:
        "../scripts/agreement.py"


# perturb env: the perturbation registry (for the families) imports the perturbation backends
rule detection_by_family:
    input:
        saliency_change_files,
    output:
        detection="results/summary/{dataset}/detection_by_family.parquet",
        method_comparison="results/summary/{dataset}/method_comparison.parquet",
    log:
        "logs/detection_by_family/{dataset}.log",
    benchmark:
        "benchmarks/detection_by_family/{dataset}.tsv"
    conda:
        "../../envs/perturb.yaml"
    params:
        cv_folds=config["analysis"]["detection"]["cv_folds"],
        bootstrap=bootstrap_params,
    script:
        "../scripts/detection.py"


rule findings:
    input:
        detection="results/summary/{dataset}/detection_by_family.parquet",
        method_comparison="results/summary/{dataset}/method_comparison.parquet",
        saliency_change="results/summary/{dataset}/saliency_change.parquet",
        severity_trends="results/summary/{dataset}/severity_trends.parquet",
        variance_decomposition="results/summary/{dataset}/variance_decomposition.parquet",
    output:
        table="results/summary/{dataset}/findings.parquet",
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


rule plot_agreement:
    input:
        "results/summary/{dataset}/agreement.parquet",
    output:
        report(
            "results/plots/{dataset}/agreement.png",
            caption="../report/agreement.rst",
            category="Saliency analysis",
            labels={"dataset": "{dataset}", "figure": "agreement between models"},
        ),
    log:
        "logs/plots/{dataset}/agreement.log",
    benchmark:
        "benchmarks/plots/{dataset}/agreement.tsv"
    conda:
        "../../envs/plots.yaml"
    params:
        dpi=config["plots"]["dpi"],
    script:
        "../scripts/plot_agreement.py"


rule plot_faithfulness:
    input:
        "results/summary/{dataset}/faithfulness.parquet",
    output:
        report(
            "results/plots/{dataset}/faithfulness.png",
            caption="../report/faithfulness.rst",
            category="Saliency analysis",
            labels={"dataset": "{dataset}", "figure": "faithfulness vs severity"},
        ),
    log:
        "logs/plots/{dataset}/faithfulness.log",
    benchmark:
        "benchmarks/plots/{dataset}/faithfulness.tsv"
    conda:
        "../../envs/plots.yaml"
    params:
        dpi=config["plots"]["dpi"],
    script:
        "../scripts/plot_faithfulness.py"


rule plot_sanity:
    input:
        sanity_files,
    output:
        report(
            "results/plots/{dataset}/sanity.png",
            caption="../report/sanity.rst",
            category="Saliency analysis",
            labels={"dataset": "{dataset}", "figure": "randomisation sanity check"},
        ),
    log:
        "logs/plots/{dataset}/sanity.log",
    benchmark:
        "benchmarks/plots/{dataset}/sanity.tsv"
    conda:
        "../../envs/plots.yaml"
    params:
        dpi=config["plots"]["dpi"],
    script:
        "../scripts/plot_sanity.py"


rule plot_detection_by_family:
    input:
        "results/summary/{dataset}/detection_by_family.parquet",
    output:
        report(
            "results/plots/{dataset}/detection_by_family.png",
            caption="../report/detection_by_family.rst",
            category="Saliency analysis",
            labels={
                "dataset": "{dataset}",
                "figure": "detection per perturbation family",
            },
        ),
    log:
        "logs/plots/{dataset}/detection_by_family.log",
    benchmark:
        "benchmarks/plots/{dataset}/detection_by_family.tsv"
    conda:
        "../../envs/plots.yaml"
    params:
        dpi=config["plots"]["dpi"],
    script:
        "../scripts/plot_detection_by_family.py"


rule train_shuffled_labels:
    input:
        data=dataset_file,
        folds="results/folds/{dataset}.parquet",
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
        train=train_settings,
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/train_shuffled_labels.py"


rule sanity_data:
    input:
        saliency=clean_saliency_file,
        data=dataset_file,
        model=model_file,
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
        method_params=method_params,
        batch_size=config["attribute"]["batch_size"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/sanity.py"
