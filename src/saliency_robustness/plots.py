"""Figures (seaborn/matplotlib, PNG), each written atomically. Figure functions end in
``_figure`` so that no name means both a figure and the computation it draws (e.g.
``robustness_scores_figure`` draws ``robustness.robustness_scores``); FIGURES names the ones
drawn from summary tables for the one plot rule."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: jobs run without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from saliency_robustness.tables import atomic_path  # noqa: E402


def _short_titles(grid: sns.FacetGrid) -> sns.FacetGrid:
    """Facet titles without 'name = ' prefixes, which overlap in narrow panels."""
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    return grid


def _save(figure, path: str | os.PathLike, dpi: int = 120) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(figure)


def _gray(image: np.ndarray) -> dict:
    return {"cmap": "gray", "vmin": 0, "vmax": 255} if image.ndim == 2 else {}


def perturbation_preview_figure(
    clean: np.ndarray,
    stack: np.ndarray,
    severities: Sequence[int],
    name: str,
    path: str | os.PathLike,
    n_images: int = 4,
    dpi: int = 120,
) -> None:
    """Grid: rows are test images, columns clean then each severity."""
    n = min(n_images, len(clean))
    columns = [("clean", clean)] + [(f"severity {s}", stack[i]) for i, s in enumerate(severities)]
    figure, axes = plt.subplots(
        n, len(columns), figsize=(1.4 * len(columns), 1.4 * n), squeeze=False
    )
    for row in range(n):
        for col, (title, images) in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(images[row], **_gray(images[row]))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
    figure.suptitle(name.replace("_", " "), fontsize=10)
    _save(figure, path, dpi)


def perturbation_grid_figure(
    clean: np.ndarray,
    perturbed: dict[str, np.ndarray],
    severities: Sequence[int],
    path: str | os.PathLike,
    title: str = "",
    dpi: int = 120,
) -> None:
    """One image under every perturbation x severity: rows are perturbations (``perturbed``
    maps name -> (severity, H, W[, C]) stack), columns clean then each severity."""
    names = list(perturbed)
    n_cols = len(severities) + 1
    figure, axes = plt.subplots(
        len(names), n_cols, figsize=(1.3 * n_cols + 1.2, 1.3 * len(names)), squeeze=False
    )
    for row, name in enumerate(names):
        for col, image in enumerate([clean, *perturbed[name]]):
            ax = axes[row, col]
            ax.imshow(image, **_gray(image))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("clean" if col == 0 else f"severity {severities[col - 1]}", fontsize=8)
        axes[row, 0].set_ylabel(name.replace("_", " "), fontsize=8, rotation=0, ha="right")
    height = figure.get_figheight()
    # Default margins are fractions of the figure: on a tall grid they leave inches of gap.
    figure.subplots_adjust(top=1 - 0.45 / height, bottom=0.1 / height, wspace=0.05, hspace=0.1)
    if title:
        figure.suptitle(title, fontsize=10, y=1 - 0.1 / height)
    _save(figure, path, dpi)


def perturbation_calibration_figure(
    table: pd.DataFrame, path: str | os.PathLike, dpi: int = 120
) -> None:
    """Mean SSIM and PSNR of perturbed vs clean test images against severity, one line per
    perturbation (``table``: perturbation, severity, ssim, psnr)."""
    long = table.melt(
        id_vars=["perturbation", "severity"], value_vars=["ssim", "psnr"], var_name="metric"
    )
    grid = sns.relplot(
        data=long,
        x="severity",
        y="value",
        hue="perturbation",
        col="metric",
        kind="line",
        marker="o",
        facet_kws={"sharey": False},
        height=3,
    )
    _short_titles(grid)
    grid.set(xticks=sorted(table["severity"].unique()))
    _save(grid.figure, path, dpi)


def robustness_scores_figure(table: pd.DataFrame, path: str | os.PathLike, dpi: int = 120) -> None:
    """Balanced error per perturbation (mean over severities) for each architecture, with
    the clean balanced error as a dashed line per architecture."""
    figure, ax = plt.subplots(figsize=(max(4.0, 0.5 * table["perturbation"].nunique() + 2), 3))
    sns.barplot(data=table, x="perturbation", y="be", hue="arch", ax=ax, errorbar="sd")
    palette = dict(zip(table["arch"].unique(), sns.color_palette(), strict=False))
    for arch, group in table.groupby("arch"):
        ax.axhline(group["be_clean"].mean(), ls="--", lw=1, color=palette[arch])
    ax.set_ylabel("balanced error (mean over severities)")
    ax.tick_params(axis="x", rotation=60)
    _save(figure, path, dpi)


def training_curves_figure(history: pd.DataFrame, path: str | os.PathLike, dpi: int = 120) -> None:
    """Loss and validation AUC/ACC per epoch, one line per fold, one column per metric.
    With a hyper-parameter grid (``train.grid``) only the chosen point's epochs are drawn."""
    if "grid_chosen" in history:
        history = history[history["grid_chosen"].astype(bool)]
    long = history.melt(
        id_vars=["arch", "fold", "epoch"],
        value_vars=["train_loss", "val_loss", "val_acc", "val_auc"],
        var_name="metric",
    )
    grid = sns.relplot(
        data=long,
        x="epoch",
        y="value",
        hue="fold",
        col="metric",
        row="arch",
        kind="line",
        facet_kws={"sharey": False},
        height=2.4,
        palette="tab10",
    )
    _save(_short_titles(grid).figure, path, dpi)


def classification_vs_severity_figure(
    metrics: pd.DataFrame, path: str | os.PathLike, dpi: int = 120
) -> None:
    """ACC, balanced ACC and AUC vs severity per perturbation (mean and SD over folds).

    Multi-label tables also hold per-label rows; the figure shows the aggregate (``label``
    'all': macro AUC, label-wise ACC)."""
    if "label" in metrics.columns:
        metrics = metrics[metrics["label"] == "all"]
    long = metrics.melt(
        id_vars=["arch", "fold", "perturbation", "severity"],
        value_vars=["acc", "balanced_acc", "auc"],
        var_name="metric",
    )
    grid = sns.relplot(
        data=long,
        x="severity",
        y="value",
        hue="perturbation",
        col="metric",
        row="arch",
        kind="line",
        marker="o",
        errorbar="sd",
        height=2.6,
    )
    _save(_short_titles(grid).figure, path, dpi)


def saliency_change_vs_severity_figure(
    summary: pd.DataFrame, path: str | os.PathLike, dpi: int = 120
) -> None:
    """Mean map change (SSIM, Spearman, top-k IoU, RMSE) vs severity, row per method; bands:
    the summary's bootstrap intervals (all images, preserved and flipped predictions alike)."""
    if "prediction" in summary.columns:
        summary = summary[summary["prediction"] == "all"]
    long = summary.melt(
        id_vars=["arch", "method", "perturbation", "severity"],
        value_vars=["ssim_mean", "spearman_mean", "topk_iou_mean", "rmse_mean"],
        var_name="metric",
    )
    long["metric"] = long["metric"].str.removesuffix("_mean")
    long["model / method"] = long["arch"] + " / " + long["method"]
    grid = sns.relplot(
        data=long,
        x="severity",
        y="value",
        hue="perturbation",
        col="metric",
        row="model / method",
        kind="line",
        marker="o",
        height=2.2,
        aspect=1.4,
        facet_kws={"sharey": "col"},
    )
    _save(_short_titles(grid).figure, path, dpi)


def misclassification_detection_figure(
    detection: pd.DataFrame, path: str | os.PathLike, dpi: int = 120
) -> None:
    """AUROC of each detector for wrong perturbed predictions (target ``wrong``), per fold."""
    data = detection.dropna(subset=["auroc"])
    if "target" in data.columns:
        data = data[data["target"] == "wrong"]
    if data.empty:
        raise ValueError(
            "No AUROC is defined: every perturbed image was classified right (or every one "
            "wrong). Attribute more images (attribute.max_images) or use stronger severities."
        )
    grid = sns.catplot(
        data=data,
        x="method",
        y="auroc",
        hue="perturbation",
        col="score",
        row="arch",
        kind="bar",
        errorbar="sd",
        height=2.6,
        aspect=1.3,
    )
    for ax in grid.axes.flat:
        ax.axhline(0.5, color="gray", linestyle="--", linewidth=0.8)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=30)
    _save(_short_titles(grid).figure, path, dpi)


def saliency_examples_figure(
    clean: np.ndarray,
    perturbed: dict[str, tuple[list[int], np.ndarray]],
    maps: dict[str, dict[tuple[str, int], np.ndarray]],
    image_indices: Sequence[int],
    path: str | os.PathLike,
    dpi: int = 120,
) -> None:
    """Per example image and perturbation: the image at each severity, then each method's map.

    ``maps[method][(perturbation, severity)]`` holds maps (N, H, W) of the attributed images.
    """
    methods = list(maps)
    n_levels = 1 + max(len(sev) for sev, _ in perturbed.values())
    block = 1 + len(methods)
    n_rows = block * len(image_indices) * len(perturbed)
    figure, axes = plt.subplots(
        n_rows, n_levels, figsize=(1.3 * n_levels, 1.3 * n_rows), squeeze=False
    )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    row = 0
    for index in image_indices:
        for name, (severities, stack) in perturbed.items():
            levels = [0, *severities]
            for col, severity in enumerate(levels):
                image = clean[index] if severity == 0 else stack[severities.index(severity)][index]
                axes[row, col].imshow(image, **_gray(image))
                axes[row, col].set_title(
                    "clean" if severity == 0 else f"{name} {severity}", fontsize=6
                )
                for m, method in enumerate(methods):
                    saliency = np.abs(maps[method][(name, severity)][index])
                    axes[row + 1 + m, col].imshow(saliency, cmap="inferno")
                    if col == 0:
                        axes[row + 1 + m, 0].set_ylabel(method, fontsize=6)
            axes[row, 0].set_ylabel(f"image {index}", fontsize=6)
            row += block
    _save(figure, path, dpi)


def localisation_vs_severity_figure(
    summary: pd.DataFrame, path: str | os.PathLike, dpi: int = 120
) -> None:
    """Pointing game, energy pointing game, top-k IoU and graded hit rate against the lesion
    masks per severity (0 = clean), one line per saliency method, one column per
    perturbation; the dashed line is chance: the mean mask fraction for the two pointing
    games, the mean ``graded_hit_chance`` for the graded hit rate (its own y scale)."""
    scores = {
        "hit_mean": "pointing game",
        "energy_mean": "energy pointing game",
        "iou_mean": "top-k IoU",
    }
    chance_of = dict.fromkeys(["pointing game", "energy pointing game"], "mask_fraction_mean")
    if "graded_hit_mean" in summary:  # summaries written before the graded hit rate lack it
        scores["graded_hit_mean"] = "graded hit rate"
        chance_of["graded hit rate"] = "graded_hit_chance_mean"
    long = summary.melt(
        id_vars=["arch", "method", "perturbation", "severity", *dict.fromkeys(chance_of.values())],
        value_vars=list(scores),
        var_name="score",
    )
    long["score"] = long["score"].map(scores)
    grid = sns.relplot(
        data=long,
        x="severity",
        y="value",
        hue="method",
        style="arch",
        row="score",
        col="perturbation",
        kind="line",
        marker="o",
        height=2.6,
        facet_kws={"sharey": "row", "margin_titles": True},
    )
    _short_titles(grid)
    grid.set(xticks=sorted(summary["severity"].unique()))
    for (score, _), ax in grid.axes_dict.items():
        if score in chance_of:
            ax.axhline(summary[chance_of[score]].mean(), ls="--", lw=1, color="gray")
        if score != "graded hit rate":  # shares of maps or pixels; the graded scores are not
            ax.set_ylim(0, 1.02)
    _save(grid.figure, path, dpi)


# --- saliency analysis: agreement, faithfulness, sanity, detection per family ---------------


def agreement_matrix(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Symmetric model x model matrix of one metric's mean from rows of
    ``agreement.agreement`` (one method and condition), averaged over any remaining
    perturbations and severities; the diagonal is 1 (a map agrees fully with itself)."""
    rows = table[table["metric"] == metric]
    means = rows.groupby(["model_a", "model_b"])["mean"].mean()
    models = sorted(set(rows["model_a"]) | set(rows["model_b"]))
    matrix = pd.DataFrame(np.eye(len(models)), index=models, columns=models)
    for (model_a, model_b), value in means.items():
        matrix.loc[model_a, model_b] = matrix.loc[model_b, model_a] = value
    return matrix


def agreement_matrices_figure(
    table: pd.DataFrame, path: str | os.PathLike, metric: str = "topk_iou", dpi: int = 120
) -> None:
    """Model x model agreement per method (rows): on clean images and on perturbed images
    at each perturbation's highest severity (columns)."""
    if table.empty:
        raise ValueError("The agreement table is empty: it needs at least two models.")
    methods = sorted(table["method"].unique())
    highest = table.groupby("perturbation")["severity"].transform("max")
    conditions = {
        "clean": table[table["severity"] == 0],
        "perturbed (highest severity)": table[(table["severity"] == highest) & (highest > 0)],
    }
    figure, axes = plt.subplots(len(methods), 2, figsize=(7.5, 3.2 * len(methods)), squeeze=False)
    for row, method in enumerate(methods):
        for col, (condition, rows) in enumerate(conditions.items()):
            ax = axes[row, col]
            matrix = agreement_matrix(rows[rows["method"] == method], metric)
            sns.heatmap(
                matrix, vmin=0, vmax=1, annot=len(matrix) <= 8, fmt=".2f", cmap="viridis",
                square=True, cbar=col == 1, ax=ax,
            )  # fmt: skip
            ax.set_title(f"{method}: {condition}", fontsize=9)
            ax.tick_params(labelsize=7)
    _save(figure, path, dpi)


def faithfulness_vs_severity_figure(
    summary: pd.DataFrame, path: str | os.PathLike, dpi: int = 120
) -> None:
    """Mean faithfulness metrics (panels) per method against severity, per perturbation
    (line style); clean images at severity 0."""
    metrics = ["deletion_auc", "insertion_auc", "road_combined", "drop_in_confidence"]
    metrics += ["drop_in_confidence_binary_mask", "infidelity", "sensitivity_max"]
    data = summary[summary["metric"].isin(metrics)].dropna(subset=["mean"])
    if data.empty:
        raise ValueError("The faithfulness summary holds no values to plot.")
    clean = data[data["severity"] == 0]
    curves = [data[data["severity"] > 0]]
    for perturbation in data.loc[data["severity"] > 0, "perturbation"].unique():
        curves.append(clean.assign(perturbation=perturbation))  # each curve starts clean
    data = pd.concat(curves, ignore_index=True)
    grid = sns.relplot(
        data=data,
        x="severity",
        y="mean",
        hue="method",
        style="perturbation",
        col="metric",
        col_wrap=3,
        kind="line",
        marker="o",
        errorbar="sd",
        height=2.6,
        aspect=1.2,
        facet_kws={"sharey": False},
    )
    _save(_short_titles(grid).figure, path, dpi)


def sanity_randomisation_figure(
    table: pd.DataFrame, path: str | os.PathLike, example: int = 0, dpi: int = 120
) -> None:
    """Adebayo et al.'s figure per method (rows): the maps of one image as the model is
    randomised from the output layer down (columns), and the mean similarity to the trained
    model's maps per stage (last column). Shows the first (arch, fold) in the table."""
    if "variant" in table:  # model randomisation only (data-randomisation rows: table)
        table = table[table["variant"] == "model"]
    arch, fold = sorted(zip(table["arch"], table["fold"], strict=True))[0]
    table = table[(table["arch"] == arch) & (table["fold"] == fold)]
    methods = sorted(table["method"].unique())
    stages = table.drop_duplicates("stage_index").sort_values("stage_index")["stage"].tolist()
    image = sorted(table["image_index"].unique())[example]
    height, width = int(table["height"].iloc[0]), int(table["width"].iloc[0])
    figure, axes = plt.subplots(
        len(methods),
        len(stages) + 1,
        figsize=(1.3 * len(stages) + 3.2, 1.5 * len(methods) + 0.3),
        squeeze=False,
        gridspec_kw={"width_ratios": [1] * len(stages) + [2.6]},
    )
    for row, method in enumerate(methods):
        rows = table[table["method"] == method]
        for col, stage in enumerate(stages):
            ax = axes[row, col]
            cell = rows[(rows["stage"] == stage) & (rows["image_index"] == image)]
            saliency = np.abs(np.asarray(cell["saliency"].iloc[0])).reshape(height, width)
            ax.imshow(saliency, cmap="inferno", vmin=0, vmax=saliency.max() or 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("trained" if stage == "none" else f"+{stage}", fontsize=7)
            if col == 0:
                ax.set_ylabel(method, fontsize=8)
        means = rows.groupby("stage_index")[["ssim", "spearman", "hog"]].mean()
        ax = axes[row, -1]
        for similarity in means.columns:
            ax.plot(means.index, means[similarity], marker="o", markersize=3, label=similarity)
        ax.set_ylim(-0.5, 1.05)
        ax.axhline(0, color="gray", linewidth=0.6)
        ax.set_xticks(range(len(stages)))
        ax.set_xticklabels([] if row < len(methods) - 1 else stages, rotation=60, fontsize=6)
        ax.tick_params(axis="y", labelsize=6)
        if row == 0:
            ax.legend(fontsize=6, loc="upper right")
            ax.set_title("similarity to trained", fontsize=7)
    _save(figure, path, dpi)


def _interval_points(data: pd.DataFrame, x: str, y: str, hue: str, **kwargs) -> None:
    """Points with precomputed interval whiskers (``<y>_ci_low``, ``<y>_ci_high``), dodged
    by ``hue``; drawn on the current axes of a FacetGrid."""
    ax = plt.gca()
    categories = sorted(data[x].unique())
    hues = sorted(data[hue].unique())
    width = 0.8 / max(1, len(hues))
    palette = sns.color_palette(n_colors=len(hues))
    for j, level in enumerate(hues):
        rows = data[data[hue] == level].set_index(x).reindex(categories)
        position = np.arange(len(categories)) - 0.4 + width * (j + 0.5)
        ax.errorbar(
            position,
            rows[y],
            yerr=[rows[y] - rows[f"{y}_ci_low"], rows[f"{y}_ci_high"] - rows[y]],
            fmt="o",
            color=palette[j],
            label=level,
            capsize=2,
            markersize=4,
        )
    ax.set_xticks(np.arange(len(categories)), categories)


def detection_by_family_figure(
    table: pd.DataFrame, path: str | os.PathLike, dpi: int = 120
) -> None:
    """AUROC of each map-change score for wrong predictions per perturbation family (top
    row) and its gain beyond the confidence drop (bottom row), per method, with the
    bootstrap intervals as whiskers."""
    change = table[(table["target"] == "wrong") & (table["kind"] == "change")]
    data = pd.concat(
        [
            change.assign(measure="auroc", value=change["auroc"],
                          value_ci_low=change["auroc_ci_low"],
                          value_ci_high=change["auroc_ci_high"]),
            change.assign(measure="auroc_gain", value=change["auroc_gain"],
                          value_ci_low=change["auroc_gain_ci_low"],
                          value_ci_high=change["auroc_gain_ci_high"]),
        ],
        ignore_index=True,
    ).dropna(subset=["value"])  # fmt: skip
    if data.empty:
        raise ValueError(
            "No AUROC is defined: too few wrong (or right) predictions on perturbed images. "
            "Attribute more images (attribute.max_images) or use stronger severities."
        )
    grid = sns.FacetGrid(data, row="measure", col="family", height=2.6, aspect=1.2, sharey="row")
    grid.map_dataframe(_interval_points, x="method", y="value", hue="score")
    grid.add_legend()
    for (measure, _), ax in grid.axes_dict.items():
        ax.axhline(0.5 if measure == "auroc" else 0.0, color="gray", linestyle="--", lw=0.8)
        ax.tick_params(axis="x", rotation=30)
    _save(_short_titles(grid).figure, path, dpi)


# --- the figures of summary tables, by name -----------------------------------------------------

# Each takes (table, path, dpi=...): the rows of its input table(s), concatenated. The key is
# the PNG's name (results/plots/{dataset}/<key>.png) and its rule's (plot_<key>): the one
# plot rule (workflow/rules/plots.smk) picks the function by ``params.figure``.
FIGURES: dict[str, Callable[..., None]] = {
    "training_curves": training_curves_figure,
    "classification_vs_severity": classification_vs_severity_figure,
    "saliency_change_vs_severity": saliency_change_vs_severity_figure,
    "misclassification_detection": misclassification_detection_figure,
    "detection_by_family": detection_by_family_figure,
    "robustness": robustness_scores_figure,
    "perturbation_calibration": perturbation_calibration_figure,
    "localisation": localisation_vs_severity_figure,
    "agreement": agreement_matrices_figure,
    "faithfulness": faithfulness_vs_severity_figure,
    "sanity": sanity_randomisation_figure,
}


def table_figure(name: str) -> Callable[..., None]:
    """The figure function registered as ``name`` in FIGURES."""
    if name not in FIGURES:
        raise ValueError(
            f"Unknown figure {name!r} (params.figure of a plot rule in workflow/rules/plots.smk);"
            f" use one of {', '.join(sorted(FIGURES))}, or add the figure to plots.FIGURES."
        )
    return FIGURES[name]
