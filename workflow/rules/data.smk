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
        dataset_file,
    output:
        "results/folds/{dataset}.parquet",
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
