rule download_medmnist:
    output:
        "resources/medmnist/{dataset}_{size}.npz",
    log:
        "logs/download_medmnist/{dataset}_{size}.log",
    benchmark:
        "benchmarks/download_medmnist/{dataset}_{size}.tsv"
    conda:
        "../../envs/data.yaml"
    # No params: the source (config "mirror") must not rerun anything downstream when it
    # changes; the MD5 check makes every source give the same file.
    script:
        "../scripts/download_medmnist.py"


rule folds:
    input:
        get_dataset_file,
    output:
        FOLDS_TABLE,
    log:
        "logs/folds/{dataset}.log",
    benchmark:
        "benchmarks/folds/{dataset}.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        k=config["folds"]["k"],
        seed=config["seed"],
    script:
        "../scripts/make_folds.py"


rule custom_dataset:
    input:
        get_custom_dataset_files,
    output:
        "resources/custom/{dataset}_{size}.npz",
    log:
        "logs/custom_dataset/{dataset}_{size}.log",
    benchmark:
        "benchmarks/custom_dataset/{dataset}_{size}.tsv"
    conda:
        "../../envs/data.yaml"
    # The spec is a param: editing the dataset's config entry rebuilds it.
    params:
        spec=get_custom_dataset_spec,
        seed=config["seed"],
    script:
        "../scripts/build_custom_dataset.py"
