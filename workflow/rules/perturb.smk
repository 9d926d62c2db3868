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
