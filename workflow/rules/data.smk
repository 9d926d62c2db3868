rule download_medmnist:
    output:
        "resources/medmnist/{dataset}_{size}.npz",
    params:
        mirror=config["mirror"],
    log:
        "logs/download_medmnist/{dataset}_{size}.log",
    benchmark:
        "benchmarks/download_medmnist/{dataset}_{size}.tsv"
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/download_medmnist.py"


rule folds:
    input:
        dataset_file,
    output:
        "results/folds/{dataset}.parquet",
    params:
        k=config["folds"]["k"],
        seed=config["seed"],
    log:
        "logs/folds/{dataset}.log",
    benchmark:
        "benchmarks/folds/{dataset}.tsv"
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/make_folds.py"
