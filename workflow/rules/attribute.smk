# Saliency maps in two rules (config/README.md "Saliency tables"): the clean maps of every
# fold's model once per (dataset, arch, method), and the perturbed maps per (dataset, arch,
# method, perturbation). Adding a perturbation adds its own jobs and leaves the others;
# sanity checks read the clean maps only. One job covers every fold (folds.run) of an
# architecture: per-fold jobs would make the full study's DAG three times larger.


ruleorder: attribute_clean > attribute


rule attribute_clean:
    input:
        data=get_dataset_file,
        models=get_fold_model_files,
    output:
        "results/saliency/{dataset}/{arch}/{method}/clean.parquet",
    log:
        "logs/attribute_clean/{dataset}/{arch}/{method}.log",
    benchmark:
        "benchmarks/attribute_clean/{dataset}/{arch}/{method}.tsv"
    conda:
        "../../envs/attribute.yaml"
    threads: config["resources"]["attribute"]["threads"]
    resources:
        gpu=config["resources"]["attribute"]["gpus"],
    params:
        # only what this job uses: editing another method or ensemble leaves it alone
        members=get_ensemble_members,
        method_params=get_method_params,
        max_images=config["attribute"]["max_images"],
        batch_size=config["attribute"]["batch_size"],
        target=config["attribute"]["target"],
        top_k_targets=get_top_k_targets,
        precision=config["attribute"]["precision"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/attribute_clean.py"


rule attribute:
    input:
        clean="results/saliency/{dataset}/{arch}/{method}/clean.parquet",
        models=get_fold_model_files,
        perturbed=PERTURBED_IMAGES,
    output:
        "results/saliency/{dataset}/{arch}/{method}/{perturbation}.parquet",
    log:
        "logs/attribute/{dataset}/{arch}/{method}/{perturbation}.log",
    benchmark:
        "benchmarks/attribute/{dataset}/{arch}/{method}/{perturbation}.tsv"
    conda:
        "../../envs/attribute.yaml"
    threads: config["resources"]["attribute"]["threads"]
    resources:
        gpu=config["resources"]["attribute"]["gpus"],
    params:
        # the clean table fixes the images and targets (max_images, target, get_top_k_targets)
        members=get_ensemble_members,
        method_params=get_method_params,
        batch_size=config["attribute"]["batch_size"],
        precision=config["attribute"]["precision"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/attribute.py"
