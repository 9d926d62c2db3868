rule plot_training_curves:
    input:
        "results/summary/{dataset}/training_history.parquet",
    output:
        report(
            "results/plots/{dataset}/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
            labels={"dataset": "{dataset}", "figure": "training curves"},
        ),
    log:
        "logs/plots/{dataset}/training_curves.log",
    benchmark:
        "benchmarks/plots/{dataset}/training_curves.tsv"
    conda:
        "../../envs/plots.yaml"
    params:
        dpi=config["plots"]["dpi"],
    script:
        "../scripts/plot_training_curves.py"


rule plot_classification_vs_severity:
    input:
        "results/summary/{dataset}/classification.parquet",
    output:
        report(
            "results/plots/{dataset}/classification_vs_severity.png",
            caption="../report/classification_vs_severity.rst",
            category="Classification",
            labels={"dataset": "{dataset}", "figure": "ACC and AUC vs severity"},
        ),
    log:
        "logs/plots/{dataset}/classification_vs_severity.log",
    benchmark:
        "benchmarks/plots/{dataset}/classification_vs_severity.tsv"
    conda:
        "../../envs/plots.yaml"
    params:
        dpi=config["plots"]["dpi"],
    script:
        "../scripts/plot_classification_vs_severity.py"


rule plot_saliency_change_vs_severity:
    input:
        "results/summary/{dataset}/saliency_change.parquet",
    output:
        report(
            "results/plots/{dataset}/saliency_change_vs_severity.png",
            caption="../report/saliency_change_vs_severity.rst",
            category="Saliency change",
            labels={"dataset": "{dataset}", "figure": "saliency change vs severity"},
        ),
    log:
        "logs/plots/{dataset}/saliency_change_vs_severity.log",
    benchmark:
        "benchmarks/plots/{dataset}/saliency_change_vs_severity.tsv"
    conda:
        "../../envs/plots.yaml"
    params:
        dpi=config["plots"]["dpi"],
    script:
        "../scripts/plot_saliency_change_vs_severity.py"


rule plot_misclassification_detection:
    input:
        "results/summary/{dataset}/misclassification_detection.parquet",
    output:
        report(
            "results/plots/{dataset}/misclassification_detection.png",
            caption="../report/misclassification_detection.rst",
            category="Saliency change",
            labels={
                "dataset": "{dataset}",
                "figure": "misclassification detection AUROC",
            },
        ),
    log:
        "logs/plots/{dataset}/misclassification_detection.log",
    benchmark:
        "benchmarks/plots/{dataset}/misclassification_detection.tsv"
    conda:
        "../../envs/plots.yaml"
    params:
        dpi=config["plots"]["dpi"],
    script:
        "../scripts/plot_misclassification_detection.py"


rule plot_examples:
    input:
        data=dataset_file,
        perturbed=perturbed_files,
        saliency=example_saliency_files,
    output:
        report(
            "results/plots/{dataset}/examples_{arch}.png",
            caption="../report/examples.rst",
            category="Saliency maps",
            labels={"dataset": "{dataset}", "arch": "{arch}"},
        ),
    log:
        "logs/plots/{dataset}/examples_{arch}.log",
    benchmark:
        "benchmarks/plots/{dataset}/examples_{arch}.tsv"
    conda:
        "../../envs/plots.yaml"
    params:
        n_images=config["plots"]["example_images"],
        fold=FOLDS[0],
        dpi=config["plots"]["dpi"],
    script:
        "../scripts/plot_examples.py"
