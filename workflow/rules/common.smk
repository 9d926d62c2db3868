"""Config helpers, name checks against the library's registries, and input functions."""


wildcard_constraints:
    dataset="[a-z0-9]+",
    arch="[a-z0-9_]+",
    fold=r"\d+",
    perturbation="[a-z0-9_]+",
    method="[a-z0-9_]+",
    size=r"\d+",


import csv
import functools

from snakemake.exceptions import WorkflowError

# The library's light modules (registries, dataset metadata, config checks): standard
# library, numpy, pandas and pyyaml only, no torch (tests/test_light_imports.py).
try:
    from saliency_robustness.config_checks import config_errors
    from saliency_robustness.datasets.custom import has_masks
    from saliency_robustness.datasets.info import dataset_info, is_multi_label
    from saliency_robustness.datasets.labels import csv_has_uncertain_labels
    from saliency_robustness.models.specs import train_params
    from saliency_robustness.perturbations.registry import (
        PERTURBATIONS,
        resolve_perturbations,
    )
except ModuleNotFoundError as error:
    raise WorkflowError(
        "The Snakemake process needs the workflow's Python packages to check the config "
        f"and plan the jobs, and '{error.name}' is missing. Run the Snakemake of the "
        "virtualenv that `make run` creates (.venv/bin/snakemake), or install the "
        "packages into the environment Snakemake runs in: pip install -r requirements.txt."
    ) from None

# Only the main process checks: each cluster job parses the Snakefile again.
_errors = config_errors(config) if workflow.is_main_process else []
if _errors:
    raise ValueError("Invalid config:\n  " + "\n  ".join(_errors))


DATASETS = config["data"]["datasets"]
SIZE = config["data"]["size"]
ARCHS = config["train"]["architectures"]
ENSEMBLES = config["train"]["ensembles"]
# Models that train jobs produce: the listed single architectures and every listed
# ensemble's members (an ensemble itself is never trained, it averages its members).
TRAINED_ARCHS = list(
    dict.fromkeys(
        [arch for arch in ARCHS if arch not in ENSEMBLES]
        + [member for arch in ARCHS if arch in ENSEMBLES for member in ENSEMBLES[arch]]
    )
)
FOLDS = config["folds"]["run"] or list(range(config["folds"]["k"]))
METHODS = config["attribute"]["methods"]


# Path templates of files that several rules and input functions name, written once here.
FOLDS_TABLE = "results/folds/{dataset}.parquet"
MODEL_WEIGHTS = "results/models/{dataset}/{arch}/fold{fold}/model.pt"
PERTURBED_IMAGES = "results/perturbed/{dataset}/{perturbation}.npz"
# Saliency tables of one (dataset, arch, method): clean.parquet holds the clean maps of
# every fold, <perturbation>.parquet the perturbed ones (attribute.smk).
SALIENCY = "results/saliency/{dataset}/{arch}/{method}/{table}.parquet"


def summary_table(name, dataset="{dataset}"):
    """A dataset's summary table: results/summary/<dataset>/<name>.parquet."""
    return f"results/summary/{dataset}/{name}.parquet"


def figure_file(name, dataset="{dataset}"):
    """A dataset's figure: results/plots/<dataset>/<name>.png."""
    return f"results/plots/{dataset}/{name}.png"


_PERTURBATIONS_OF = {}


def perturbations_for(dataset):
    """Perturbation names applied to one dataset's test images: the configured list, or
    for 'auto' the set of the dataset's modality (saliency_robustness.perturbations)."""
    names = config["perturb"]["perturbations"]
    if names != "auto":
        return names
    if dataset not in _PERTURBATIONS_OF:
        try:  # channel count filters RGB-only perturbations; unknown datasets skip that
            n_channels = dataset_info(dataset, config["data"]).n_channels
        except Exception:
            n_channels = None
        _PERTURBATIONS_OF[dataset] = resolve_perturbations(
            config["perturb"], dataset, n_channels
        )
    return _PERTURBATIONS_OF[dataset]


CUSTOM = config["data"].get("custom") or {}


def get_dataset_file(wildcards):
    """The dataset's npz: built from data.custom, or the downloaded MedMNIST file."""
    if wildcards.dataset in CUSTOM:
        return f"resources/custom/{wildcards.dataset}_{SIZE}.npz"
    return f"resources/medmnist/{wildcards.dataset}_{SIZE}.npz"


def _custom_csv(spec):
    csv = Path(spec["csv"])
    return csv if csv.is_absolute() else Path(spec["root"]) / csv


def get_custom_dataset_files(wildcards):
    """A folder dataset's CSV and every image and mask it lists, so that editing or
    replacing any of them rebuilds the dataset; nothing for synthetic sets. Paths are
    checked (existence, inside root) at config time; stdlib csv keeps the parse light.
    """
    spec = CUSTOM[wildcards.dataset]
    if spec["source"] != "folder":
        return []
    path = _custom_csv(spec)
    files = [str(path)]
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            for column in ("path", "mask"):
                if (row.get(column) or "").strip():
                    files.append(str(Path(spec["root"]) / row[column].strip()))
    return files


def get_custom_dataset_spec(wildcards):
    """The dataset's config entry; ring_width only where set (> 0), so that datasets built
    before the key existed keep their params and are not rebuilt."""
    spec = dict(CUSTOM[wildcards.dataset])
    if not spec.get("ring_width"):
        spec.pop("ring_width", None)
    return spec


def dataset_has_masks(dataset):
    """Whether localisation metrics apply: synthetic sets, and folder sets whose CSV has a
    filled 'mask' column."""
    spec = CUSTOM.get(dataset)
    return spec is not None and has_masks(spec)


def get_top_k_targets(wildcards):
    """attribute.top_k_targets for multi-label datasets and 1 for the others, where it is
    ignored: editing it reruns only the multi-label datasets' attribution."""
    task = dataset_info(wildcards.dataset, config["data"]).task
    return config["attribute"]["top_k_targets"] if is_multi_label(task) else 1


def get_multi_label(wildcards):
    """Whether the dataset's task is multi-label (per-label confidence in saliency_change)."""
    return is_multi_label(dataset_info(wildcards.dataset, config["data"]).task)


def get_bootstrap_settings(wildcards):
    """Settings of the hierarchical bootstrap behind every interval and paired test."""
    return {
        "n_resamples": config["metrics"]["bootstrap_resamples"],
        "confidence": config["metrics"]["confidence"],
        "seed": config["seed"],
    }


def get_faithfulness_settings(wildcards):
    """analysis.faithfulness without the covering keys at their defaults (covering [darken];
    binary_threshold only matters with binary_mask), so that finished faithfulness jobs
    keep their params and editing an unused threshold reruns nothing."""
    settings = dict(config["analysis"]["faithfulness"])
    if settings.get("covering") == ["darken"]:
        del settings["covering"]
    if "binary_mask" not in settings.get("covering", []):
        settings.pop("binary_threshold", None)
    return settings


def get_perturbed_files(wildcards):
    return expand(
        PERTURBED_IMAGES,
        dataset=wildcards.dataset,
        perturbation=perturbations_for(wildcards.dataset),
    )


def get_model_files(wildcards):
    """The model's weights; for an ensemble, every member's weights of the same fold."""
    if wildcards.arch in ENSEMBLES:
        return [
            MODEL_WEIGHTS.format(
                dataset=wildcards.dataset, arch=member, fold=wildcards.fold
            )
            for member in ENSEMBLES[wildcards.arch]
        ]
    return MODEL_WEIGHTS.format(**wildcards)


def per_model(pattern, dataset, **extra):
    """Expand a per-(arch, fold) path for every configured architecture and fold."""
    return expand(pattern, dataset=dataset, arch=ARCHS, fold=FOLDS, **extra)


def get_ensemble_members(wildcards):
    """The ensemble's members (train.ensembles) when arch is one, else an empty list: an
    attribution job's params name only its own model."""
    return list(ENSEMBLES.get(wildcards.arch, []))


def get_fold_model_files(wildcards):
    """Every fold's weights of one architecture, fold-major (for an ensemble each fold's
    member weights): the models of one attribution job."""
    members = ENSEMBLES.get(wildcards.arch, [wildcards.arch])
    return [
        MODEL_WEIGHTS.format(dataset=wildcards.dataset, arch=member, fold=fold)
        for fold in FOLDS
        for member in members
    ]


def saliency_tables(dataset, arch, method):
    """The clean and every perturbed saliency table of architectures and methods."""
    return expand(
        SALIENCY,
        dataset=dataset,
        arch=arch,
        method=method,
        table=["clean", *perturbations_for(dataset)],
    )


def get_saliency_files(wildcards):
    """One architecture's and method's saliency tables (clean and perturbed)."""
    return saliency_tables(wildcards.dataset, wildcards.arch, wildcards.method)


def get_clean_saliency_file(wildcards):
    return SALIENCY.format(
        dataset=wildcards.dataset,
        arch=wildcards.arch,
        method=wildcards.method,
        table="clean",
    )


def get_perturbation_params(wildcards):
    return config["perturb"]["params"].get(wildcards.perturbation, {})


def get_method_params(wildcards):
    return config["attribute"]["params"].get(wildcards.method, {})


def get_classification_files(wildcards):
    return per_model(
        "results/evaluation/{dataset}/{arch}/fold{fold}/metrics.parquet",
        wildcards.dataset,
    )


def get_prediction_files(wildcards):
    """Every model's per-image predictions (classification intervals, robustness)."""
    return per_model(
        "results/evaluation/{dataset}/{arch}/fold{fold}/predictions.parquet",
        wildcards.dataset,
    )


def get_history_files(wildcards):
    return expand(
        "results/models/{dataset}/{arch}/fold{fold}/history.parquet",
        dataset=wildcards.dataset,
        arch=TRAINED_ARCHS,
        fold=FOLDS,
    )


def get_saliency_change_files(wildcards):
    return expand(
        "results/metrics/saliency_change/{dataset}/{arch}/{method}.parquet",
        dataset=wildcards.dataset,
        arch=ARCHS,
        method=METHODS,
    )


def get_agreement_files(wildcards):
    """Every model's saliency tables of one dataset (pairs of architectures and folds)."""
    return saliency_tables(wildcards.dataset, ARCHS, METHODS)


def get_faithfulness_files(wildcards):
    return expand(
        "results/faithfulness/{dataset}/{arch}/{method}.parquet",
        dataset=wildcards.dataset,
        arch=ARCHS,
        method=METHODS,
    )


def get_sanity_files(wildcards):
    """Randomisation checks of each architecture's first fold (they test the method); with
    analysis.sanity.data_randomisation also the shuffled-label model's (not for ensembles).
    """
    files = expand(
        "results/sanity/{dataset}/{arch}/fold{fold}/{method}.parquet",
        dataset=wildcards.dataset,
        arch=ARCHS,
        fold=FOLDS[0],
        method=METHODS,
    )
    if config["analysis"]["sanity"]["data_randomisation"]:
        files += expand(
            "results/sanity_data/{dataset}/{arch}/fold{fold}/{method}.parquet",
            dataset=wildcards.dataset,
            arch=[arch for arch in ARCHS if arch not in ENSEMBLES],
            fold=FOLDS[0],
            method=METHODS,
        )
    return files


def analysis_outputs(dataset):
    """Tables and figures of the analysis families in analysis.run."""
    families = list(config["analysis"]["run"])
    if len(ARCHS) * len(FOLDS) < 2 and "agreement" in families:
        families.remove("agreement")  # agreement needs two models
        logger.warning("analysis: agreement needs two models (architectures or folds)")
    tables = {"detection": "detection_by_family"}
    files = []
    for family in families:
        name = tables.get(family, family)
        files += [
            summary_table(name, dataset),
            figure_file(name, dataset),
        ]
    if "detection" in families:  # the findings state the detection answers
        files += [
            summary_table("findings", dataset),
            f"results/summary/{dataset}/findings.csv",
            f"results/summary/{dataset}/findings.html",
        ]
    return files


def get_localisation_files(wildcards):
    return expand(
        "results/localisation/{dataset}/{arch}/{method}.parquet",
        dataset=wildcards.dataset,
        arch=ARCHS,
        method=METHODS,
    )


def get_example_saliency_files(wildcards):
    """Every method's saliency tables of one architecture (the figure shows FOLDS[0])."""
    return saliency_tables(wildcards.dataset, wildcards.arch, METHODS)


def all_outputs():
    outputs = []
    for dataset in DATASETS:
        outputs += [
            figure_file(name, dataset)
            for name in [
                "training_curves",
                "classification_vs_severity",
                "saliency_change_vs_severity",
                "misclassification_detection",
            ]
        ]
        outputs += expand(
            "results/plots/{dataset}/examples_{arch}.png", dataset=dataset, arch=ARCHS
        )
        outputs += expand(
            "results/plots/{dataset}/perturbations/{perturbation}.png",
            dataset=dataset,
            perturbation=perturbations_for(dataset),
        )
        outputs += [  # perturbation calibration, preview grid, robustness scores
            summary_table("perturbation_calibration", dataset),
            figure_file("perturbation_calibration", dataset),
            figure_file("perturbation_grid", dataset),
            summary_table("robustness", dataset),
            summary_table("robustness_summary", dataset),
            summary_table("robustness_over_folds", dataset),
            figure_file("robustness", dataset),
        ]
        outputs += [
            summary_table(name, dataset)
            for name in [
                "classification",
                "classification_summary",
                "training_history",
                "saliency_change",
                "misclassification_detection",
                "severity_trends",
                "variance_decomposition",
            ]
        ]
        if dataset_has_masks(dataset):  # localisation needs lesion masks
            outputs += [
                summary_table("localisation", dataset),
                figure_file("localisation", dataset),
            ]
        outputs += analysis_outputs(dataset)
    outputs += colour_preview_outputs()  # perturb.smk: only for studies with RGB data
    return outputs


def _n_channels(dataset):
    """Channel count of a dataset, None where unknown."""
    try:  # as perturbations_for: unknown datasets count as not RGB
        return dataset_info(dataset, config["data"]).n_channels
    except Exception:
        return None


def colour_preview_perturbations():
    """The study's perturbations that take RGB images: those its RGB datasets get, or in a
    study without one (the figure is then built only on request) every dataset's."""
    rgb = [d for d in DATASETS if _n_channels(d) == 3]
    names = dict.fromkeys(n for d in (rgb or DATASETS) for n in perturbations_for(d))
    return [n for n in names if n in PERTURBATIONS and 3 in PERTURBATIONS[n].channels]


COLOUR_PREVIEW = "results/plots/colour_test_images/perturbation_grid.png"


def colour_preview_outputs():
    """rule all builds the colour preview grid when the study has an RGB dataset."""
    return [COLOUR_PREVIEW] if any(_n_channels(d) == 3 for d in DATASETS) else []


@functools.cache  # read each CSV once, not once per train job
def has_uncertain_labels(dataset):
    """Whether a multi-label folder dataset's CSV marks a label uncertain (name:-1)."""
    spec = CUSTOM.get(dataset) or {}
    if spec.get("source") != "folder" or spec.get("task") != "multi-label":
        return False
    path = _custom_csv(spec)
    return path.is_file() and csv_has_uncertain_labels(path)


def get_train_settings(wildcards):
    """train settings of this job's model only (models.specs.train_params: a variant's
    overrides applied, options only where not at their defaults): adding an architecture,
    variant or ensemble, or another architecture's weights file, changes no finished train
    job's params; checkpoint_every changes no result and is read from the config by the
    script; uncertain_labels only where the dataset has uncertain labels (the others draw
    none)."""
    settings = train_params(wildcards.arch, config["train"])
    if not has_uncertain_labels(wildcards.dataset):
        settings.pop("uncertain_labels", None)
    return settings
