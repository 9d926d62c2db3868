"""How saliency maps and predictions change under perturbation.

Every map is compared after the same normalisation: absolute value, then scaled to
[0, 1] by its maximum (a constant map stays constant and is flagged, never divided by
zero). Per image and severity: RMSE, SSIM, Spearman rank correlation and top-k%
intersection-over-union against the clean map, joined with whether the perturbed
prediction is wrong or flipped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from skimage.metrics import structural_similarity
from sklearn.metrics import roc_auc_score

from saliency_robustness.tables import maps_from_table

CHANGE_SCORES = {
    # score name -> (column, sign): larger score = larger change
    "1 - SSIM": ("ssim", -1.0),
    "RMSE": ("rmse", 1.0),
    "1 - Spearman": ("spearman", -1.0),
    "1 - top-k IoU": ("topk_iou", -1.0),
    "confidence drop (baseline)": ("confidence_drop", 1.0),
}


def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """|map| scaled to [0, 1] by each map's maximum; all-zero maps stay zero."""
    magnitude = np.abs(maps.astype(np.float64))
    peak = magnitude.reshape(len(maps), -1).max(axis=1)
    scale = np.where(peak > 0, peak, 1.0)
    return magnitude / scale[:, None, None]


def rmse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a - b) ** 2).reshape(len(a), -1).mean(axis=1))


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Structural similarity per pair of [0, 1] maps (skimage, 7x7 window)."""
    return np.array(
        [structural_similarity(x, y, data_range=1.0) for x, y in zip(a, b, strict=True)],
        dtype=np.float64,
    )


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation per pair; NaN where either map is constant."""
    ra = rankdata(a.reshape(len(a), -1), axis=1)
    rb = rankdata(b.reshape(len(b), -1), axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denominator = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (ra * rb).sum(axis=1) / denominator, np.nan)


def top_k_mask(maps: np.ndarray, top_k_percent: float) -> np.ndarray:
    """Boolean masks of the k% highest-valued pixels (ties broken by pixel order)."""
    flat = maps.reshape(len(maps), -1)
    k = max(1, int(round(flat.shape[1] * top_k_percent / 100)))
    order = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    mask = np.zeros_like(flat, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask.reshape(maps.shape)


def top_k_iou(a: np.ndarray, b: np.ndarray, top_k_percent: float) -> np.ndarray:
    ma, mb = top_k_mask(a, top_k_percent), top_k_mask(b, top_k_percent)
    inter = (ma & mb).reshape(len(a), -1).sum(axis=1)
    union = (ma | mb).reshape(len(a), -1).sum(axis=1)
    return inter / union


def saliency_change(saliency: pd.DataFrame, top_k_percent: float) -> pd.DataFrame:
    """Per-image change of map and prediction, clean (severity 0) vs each severity.

    Clean and perturbed rows are matched on (perturbation, image_index, target), so a
    multi-label table with several targets per image compares each target's maps. There
    ``label``/``predicted`` are the target label's true and predicted presence, so ``wrong``
    and ``flipped`` are per target label, and the confidence drop is that label's sigmoid
    probability drop.
    """
    keys = ["dataset", "arch", "fold", "method", "perturbation"]
    join = ["perturbation", "image_index", "target"]
    clean = saliency[saliency["severity"] == 0].set_index(join)
    perturbed = saliency[saliency["severity"] > 0].reset_index(drop=True)
    if perturbed.empty:
        raise ValueError("The saliency table holds no perturbed images (severity > 0).")
    if not clean.index.is_unique:
        raise ValueError(
            "The saliency table has several clean rows for one (perturbation, image_index, "
            "target); it mixes runs. Rerun the attribute rule for this model and method."
        )
    missing = ~perturbed.set_index(join).index.isin(clean.index)
    if missing.any():
        first = perturbed.loc[missing, join].iloc[0].tolist()
        raise ValueError(
            f"{int(missing.sum())} perturbed rows have no clean row (first: perturbation, "
            f"image_index, target = {first}); rerun the attribute rule."
        )
    reference = clean.loc[list(zip(*(perturbed[key] for key in join), strict=True))]
    clean_maps = normalise_maps(maps_from_table(reference))
    maps = normalise_maps(maps_from_table(perturbed))
    clean_predicted = reference["predicted"].to_numpy()
    clean_probability = reference["target_probability"].to_numpy()
    return pd.DataFrame(
        {
            **{key: perturbed[key] for key in keys},
            "severity": perturbed["severity"],
            "image_index": perturbed["image_index"],
            "label": perturbed["label"],
            "target": perturbed["target"],
            "clean_predicted": clean_predicted,
            "predicted": perturbed["predicted"],
            "wrong": perturbed["predicted"].to_numpy() != perturbed["label"].to_numpy(),
            "flipped": perturbed["predicted"].to_numpy() != clean_predicted,
            "clean_target_probability": clean_probability,
            "target_probability": perturbed["target_probability"],
            "confidence_drop": clean_probability - perturbed["target_probability"].to_numpy(),
            "rmse": rmse(clean_maps, maps),
            "ssim": ssim(clean_maps, maps),
            "spearman": spearman(clean_maps, maps),
            "topk_iou": top_k_iou(clean_maps, maps, top_k_percent),
            "clean_is_constant": reference["is_constant"].to_numpy(),
            "is_constant": perturbed["is_constant"],
        }
    )


def summarise_change(change: pd.DataFrame) -> pd.DataFrame:
    """Mean per fold, then mean and standard deviation over folds, per
    (dataset, arch, method, perturbation, severity)."""
    group = ["dataset", "arch", "method", "perturbation", "severity"]
    values = ["rmse", "ssim", "spearman", "topk_iou", "wrong", "flipped", "confidence_drop"]
    per_fold = change.groupby(group + ["fold"])[values].mean().reset_index()
    summary = per_fold.groupby(group)[values].agg(["mean", "std"])
    summary.columns = [f"{value}_{stat}" for value, stat in summary.columns]
    summary["n_folds"] = per_fold.groupby(group)["fold"].nunique()
    return summary.reset_index()


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    keep = np.isfinite(scores)
    labels, scores = labels[keep], scores[keep]
    if len(np.unique(labels)) < 2:
        return float("nan")  # undefined when every image is right (or every one wrong)
    return float(roc_auc_score(labels, scores))


def misclassification_detection(change: pd.DataFrame) -> pd.DataFrame:
    """AUROC of each change score as a detector of a wrong prediction on perturbed images.

    One row per (dataset, arch, fold, method, perturbation, score), plus
    perturbation ``all`` pooling every perturbation and severity.
    """
    rows = []
    pooled = change.assign(perturbation="all")
    for (dataset, arch, fold, method, perturbation), group in pd.concat([change, pooled]).groupby(
        ["dataset", "arch", "fold", "method", "perturbation"], sort=True
    ):
        wrong = group["wrong"].to_numpy()
        for score, (column, sign) in CHANGE_SCORES.items():
            rows.append(
                {
                    "dataset": dataset,
                    "arch": arch,
                    "fold": fold,
                    "method": method,
                    "perturbation": perturbation,
                    "score": score,
                    "auroc": _auroc(wrong, sign * group[column].to_numpy(dtype=float)),
                    "n_wrong": int(wrong.sum()),
                    "n_right": int((~wrong).sum()),
                }
            )
    return pd.DataFrame(rows)


def _cross_validated_auroc(
    wrong: np.ndarray, features: np.ndarray, n_splits: int, seed: int
) -> float:
    """AUROC of out-of-fold predictions of a logistic regression on standardised features.

    Why this baseline adjustment: the confidence drop already predicts errors; what a map
    score adds is the AUROC of [confidence drop, score] minus that of [confidence drop]
    alone, both from the same monotone model fitted on the same folds. Cross-validation keeps
    the extra feature from buying AUROC by overfitting; a logistic model (not, e.g., a
    forest) matches the one-score AUROCs' monotone use of each score.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    keep = np.isfinite(features).all(axis=1)
    wrong, features = wrong[keep], features[keep]
    minority = int(min(wrong.sum(), (~wrong).sum())) if len(wrong) else 0
    if minority < 2:
        return float("nan")  # too few errors (or successes) for two folds
    folds = StratifiedKFold(min(n_splits, minority), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression())
    scores = cross_val_predict(model, features, wrong, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(wrong, scores))


def detection_by_family(
    change: pd.DataFrame, families: dict[str, str], n_splits: int = 5, seed: int = 0
) -> pd.DataFrame:
    """Per (dataset, arch, fold, method, perturbation family, score): how well each map
    change score detects a wrong prediction on perturbed images, alone (``auroc``) and beyond
    the prediction's own confidence drop (``auroc_gain``: cross-validated AUROC of a
    logistic model on [confidence drop, score] minus that on [confidence drop] alone, see
    ``_cross_validated_auroc``). ``families`` maps each perturbation to its family
    (``perturbations.get_perturbation(name).family``); family ``all`` pools every one.
    """
    missing = sorted(set(change["perturbation"]) - set(families))
    if missing:
        raise KeyError(f"No perturbation family for {missing}; pass families for every one.")
    table = change.assign(family=change["perturbation"].map(families))
    table = pd.concat([table, table.assign(family="all")], ignore_index=True)
    rows = []
    keys = ["dataset", "arch", "fold", "method", "family"]
    for key, group in table.groupby(keys, sort=True):
        wrong = group["wrong"].to_numpy(dtype=bool)
        drop = group["confidence_drop"].to_numpy(dtype=float)[:, None]
        baseline = _cross_validated_auroc(wrong, drop, n_splits, seed)
        for score, (column, sign) in CHANGE_SCORES.items():
            if column == "confidence_drop":
                continue
            values = sign * group[column].to_numpy(dtype=float)
            combined = _cross_validated_auroc(
                wrong, np.column_stack([drop[:, 0], values]), n_splits, seed
            )
            rows.append(
                {
                    **dict(zip(keys, key, strict=True)),
                    "score": score,
                    "auroc": _auroc(wrong, values),
                    "auroc_confidence_drop": _auroc(wrong, drop[:, 0]),
                    "auroc_cv_baseline": baseline,
                    "auroc_cv_combined": combined,
                    "auroc_gain": combined - baseline,
                    "n_wrong": int(wrong.sum()),
                    "n_right": int((~wrong).sum()),
                }
            )
    return pd.DataFrame(rows)
