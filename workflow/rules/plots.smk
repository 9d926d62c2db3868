# Every figure of summary tables is the one rule plot_table (workflow/rules/plot_table.smk,
# script workflow/scripts/plot.py) with its own input, output and params.figure (a key of
# plots.FIGURES). Figures of images have rules of their own: the example maps (below, images
# and saliency tables) and the perturbation grids (perturb.smk, images in the perturb env).
module plot_template:
    snakefile:
        "plot_table.smk"


use rule plot_table from plot_template as plot_training_curves with:
    input:
        summary_table("training_history"),
    output:
        report(
            figure_file("training_curves"),
            caption="../report/training_curves.rst",
            category="Training",
            labels={"dataset": "{dataset}", "figure": "training curves"},
        ),
    log:
        "logs/plots/{dataset}/training_curves.log",
    benchmark:
        "benchmarks/plots/{dataset}/training_curves.tsv"
    params:
        figure="training_curves",
        dpi=config["plots"]["dpi"],


use rule plot_table from plot_template as plot_classification_vs_severity with:
    input:
        summary_table("classification"),
    output:
        report(
            figure_file("classification_vs_severity"),
            caption="../report/classification_vs_severity.rst",
            category="Classification",
            labels={"dataset": "{dataset}", "figure": "ACC and AUC vs severity"},
        ),
    log:
        "logs/plots/{dataset}/classification_vs_severity.log",
    benchmark:
        "benchmarks/plots/{dataset}/classification_vs_severity.tsv"
    params:
        figure="classification_vs_severity",
        dpi=config["plots"]["dpi"],


use rule plot_table from plot_template as plot_saliency_change_vs_severity with:
    input:
        summary_table("saliency_change"),
    output:
        report(
            figure_file("saliency_change_vs_severity"),
            caption="../report/saliency_change_vs_severity.rst",
            category="Saliency change",
            labels={"dataset": "{dataset}", "figure": "saliency change vs severity"},
        ),
    log:
        "logs/plots/{dataset}/saliency_change_vs_severity.log",
    benchmark:
        "benchmarks/plots/{dataset}/saliency_change_vs_severity.tsv"
    params:
        figure="saliency_change_vs_severity",
        dpi=config["plots"]["dpi"],


use rule plot_table from plot_template as plot_misclassification_detection with:
    input:
        summary_table("misclassification_detection"),
    output:
        report(
            figure_file("misclassification_detection"),
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
    params:
        figure="misclassification_detection",
        dpi=config["plots"]["dpi"],


use rule plot_table from plot_template as plot_robustness with:
    input:
        summary_table("robustness"),
    output:
        report(
            figure_file("robustness"),
            caption="../report/robustness.rst",
            category="Classification",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "robustness (balanced error)"},
        ),
    log:
        "logs/plot_robustness/{dataset}.log",
    benchmark:
        "benchmarks/plot_robustness/{dataset}.tsv"
    params:
        figure="robustness",
        dpi=config["plots"]["dpi"],


use rule plot_table from plot_template as plot_perturbation_calibration with:
    input:
        summary_table("perturbation_calibration"),
    output:
        report(
            figure_file("perturbation_calibration"),
            caption="../report/perturbation_calibration.rst",
            category="Perturbations",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "calibration (SSIM, PSNR)"},
        ),
    log:
        "logs/plot_perturbation_calibration/{dataset}.log",
    benchmark:
        "benchmarks/plot_perturbation_calibration/{dataset}.tsv"
    params:
        figure="perturbation_calibration",
        dpi=config["plots"]["dpi"],


use rule plot_table from plot_template as plot_agreement with:
    input:
        summary_table("agreement"),
    output:
        report(
            figure_file("agreement"),
            caption="../report/agreement.rst",
            category="Saliency analysis",
            labels={"dataset": "{dataset}", "figure": "agreement between models"},
        ),
    log:
        "logs/plots/{dataset}/agreement.log",
    benchmark:
        "benchmarks/plots/{dataset}/agreement.tsv"
    params:
        figure="agreement",
        dpi=config["plots"]["dpi"],


use rule plot_table from plot_template as plot_faithfulness with:
    input:
        summary_table("faithfulness"),
    output:
        report(
            figure_file("faithfulness"),
            caption="../report/faithfulness.rst",
            category="Saliency analysis",
            labels={"dataset": "{dataset}", "figure": "faithfulness vs severity"},
        ),
    log:
        "logs/plots/{dataset}/faithfulness.log",
    benchmark:
        "benchmarks/plots/{dataset}/faithfulness.tsv"
    params:
        figure="faithfulness",
        dpi=config["plots"]["dpi"],


use rule plot_table from plot_template as plot_sanity with:
    input:
        get_sanity_files,
    output:
        report(
            figure_file("sanity"),
            caption="../report/sanity.rst",
            category="Saliency analysis",
            labels={"dataset": "{dataset}", "figure": "randomisation sanity check"},
        ),
    log:
        "logs/plots/{dataset}/sanity.log",
    benchmark:
        "benchmarks/plots/{dataset}/sanity.tsv"
    params:
        figure="sanity",
        dpi=config["plots"]["dpi"],


use rule plot_table from plot_template as plot_detection_by_family with:
    input:
        summary_table("detection_by_family"),
    output:
        report(
            figure_file("detection_by_family"),
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
    params:
        figure="detection_by_family",
        dpi=config["plots"]["dpi"],


use rule plot_table from plot_template as plot_localisation with:
    input:
        summary_table("localisation"),
    output:
        report(
            figure_file("localisation"),
            caption="../report/localisation.rst",
            category="Localisation",
            labels={"dataset": "{dataset}", "figure": "localisation vs severity"},
        ),
    log:
        "logs/plots/{dataset}/localisation.log",
    benchmark:
        "benchmarks/plots/{dataset}/localisation.tsv"
    params:
        figure="localisation",
        dpi=config["plots"]["dpi"],


rule plot_examples:
    input:
        data=get_dataset_file,
        perturbed=get_perturbed_files,
        saliency=get_example_saliency_files,
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
