rule perturb:
    input:
        dataset_file,
    output:
        images="results/perturbed/{dataset}/{perturbation}.npz",
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
        overrides=perturbation_params,
    script:
        "../scripts/perturb.py"


rule perturbation_calibration:
    input:
        data=dataset_file,
        perturbed=perturbed_files,
    output:
        "results/summary/{dataset}/perturbation_calibration.parquet",
    log:
        "logs/perturbation_calibration/{dataset}.log",
    benchmark:
        "benchmarks/perturbation_calibration/{dataset}.tsv"
    conda:
        "../../envs/perturb.yaml"
    script:
        "../scripts/perturbation_calibration.py"


rule plot_perturbation_calibration:
    input:
        "results/summary/{dataset}/perturbation_calibration.parquet",
    output:
        report(
            "results/plots/{dataset}/perturbation_calibration.png",
            caption="../report/perturbation_calibration.rst",
            category="Perturbations",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "calibration (SSIM, PSNR)"},
        ),
    log:
        "logs/plot_perturbation_calibration/{dataset}.log",
    benchmark:
        "benchmarks/plot_perturbation_calibration/{dataset}.tsv"
    conda:
        "../../envs/plots.yaml"
    params:
        dpi=config["plots"]["dpi"],
    script:
        "../scripts/plot_perturbation_calibration.py"


rule plot_perturbation_grid:
    input:
        data=dataset_file,
        perturbed=perturbed_files,
    output:
        report(
            "results/plots/{dataset}/perturbation_grid.png",
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
        metrics=classification_files,
        predictions=prediction_files,
    output:
        scores="results/summary/{dataset}/robustness.parquet",
        summary="results/summary/{dataset}/robustness_summary.parquet",
        over_folds="results/summary/{dataset}/robustness_over_folds.parquet",
    log:
        "logs/robustness/{dataset}.log",
    benchmark:
        "benchmarks/robustness/{dataset}.tsv"
    conda:
        "../../envs/metrics.yaml"
    params:
        baseline=config["perturb"]["baseline_arch"] or ARCHS[0],
        bootstrap=bootstrap_params,
    script:
        "../scripts/robustness.py"


rule plot_robustness:
    input:
        "results/summary/{dataset}/robustness.parquet",
    output:
        report(
            "results/plots/{dataset}/robustness.png",
            caption="../report/robustness.rst",
            category="Classification",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "robustness (balanced error)"},
        ),
    log:
        "logs/plot_robustness/{dataset}.log",
    benchmark:
        "benchmarks/plot_robustness/{dataset}.tsv"
    conda:
        "../../envs/plots.yaml"
    params:
        dpi=config["plots"]["dpi"],
    script:
        "../scripts/plot_robustness.py"


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
