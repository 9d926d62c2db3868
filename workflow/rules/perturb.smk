rule perturb:
    input:
        get_dataset_file,
    output:
        images=PERTURBED_IMAGES,
        preview=report(
            "results/plots/{dataset}/perturbations/{perturbation}.png",
            caption="../report/perturbation_preview.rst",
            category="Perturbations",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "perturbation": "{perturbation}"},
        ),
    log:
        "logs/perturb/{dataset}/{perturbation}.log",
    benchmark:
        "benchmarks/perturb/{dataset}/{perturbation}.tsv"
    conda:
        "../../envs/perturb.yaml"
    params:
        severities=config["perturb"]["severities"],
        seed=config["seed"],
        overrides=get_perturbation_params,
    script:
        "../scripts/perturb.py"


rule perturbation_calibration:
    input:
        data=get_dataset_file,
        perturbed=get_perturbed_files,
    output:
        summary_table("perturbation_calibration"),
    log:
        "logs/perturbation_calibration/{dataset}.log",
    benchmark:
        "benchmarks/perturbation_calibration/{dataset}.tsv"
    conda:
        "../../envs/perturb.yaml"
    script:
        "../scripts/perturbation_calibration.py"


rule plot_perturbation_grid:
    input:
        data=get_dataset_file,
        perturbed=get_perturbed_files,
    output:
        report(
            figure_file("perturbation_grid"),
            caption="../report/perturbation_grid.rst",
            category="Perturbations",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "every perturbation x severity"},
        ),
    log:
        "logs/plot_perturbation_grid/{dataset}.log",
    benchmark:
        "benchmarks/plot_perturbation_grid/{dataset}.tsv"
    conda:
        "../../envs/perturb.yaml"
    params:
        image=config["perturb"]["preview_image"],
        dpi=config["plots"]["dpi"],
    script:
        "../scripts/plot_perturbation_grid.py"


# metrics env: the intervals recompute balanced errors on bootstrap resamples of the images
rule robustness:
    input:
        metrics=get_classification_files,
        predictions=get_prediction_files,
    output:
        scores=summary_table("robustness"),
        summary=summary_table("robustness_summary"),
        over_folds=summary_table("robustness_over_folds"),
    log:
        "logs/robustness/{dataset}.log",
    benchmark:
        "benchmarks/robustness/{dataset}.tsv"
    conda:
        "../../envs/metrics.yaml"
    params:
        baseline=config["perturb"]["baseline_arch"] or ARCHS[0],
        bootstrap=get_bootstrap_settings,
    script:
        "../scripts/robustness.py"


# One light job, no dataset input: four generated colour test images (fundus, dermatoscopy,
# H&E, blood smear) at the study's size under each RGB perturbation and severity.
rule plot_colour_perturbations:
    output:
        report(
            COLOUR_PREVIEW,
            caption="../report/colour_perturbation_grid.rst",
            category="Perturbations",
            subcategory="colour test images",
            labels={"figure": "RGB perturbations x severity, colour test images"},
        ),
    log:
        "logs/plot_colour_perturbations.log",
    benchmark:
        "benchmarks/plot_colour_perturbations.tsv"
    conda:
        "../../envs/perturb.yaml"
    params:
        perturbations=lambda wildcards: colour_preview_perturbations(),
        severities=config["perturb"]["severities"],
        size=SIZE,
        seed=config["seed"],
        severity_tables=lambda wildcards: {
            name: config["perturb"]["params"].get(name, {}).get("severity_table")
            for name in colour_preview_perturbations()
        },
        dpi=config["plots"]["dpi"],
    script:
        "../scripts/plot_colour_perturbations.py"
