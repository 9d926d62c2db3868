"""Known-answer tests of the statistics behind every interval, test and q-value."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

from saliency_robustness.analysis.statistics import (
    HierarchicalBootstrap,
    bh_q_values,
    bootstrap_p_value,
    interval,
    per_image_trend,
    weighted_auroc,
    weighted_mean,
)


def test_weighted_auroc_equals_sklearn_on_rows_repeated_by_their_weights():
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.normal(size=300) + labels, 1)  # many ties
    weights = rng.integers(0, 3, size=(6, 300)).astype(float)
    expected = [
        roc_auc_score(np.repeat(labels, w.astype(int)), np.repeat(scores, w.astype(int)))
        for w in weights
    ]
    np.testing.assert_allclose(weighted_auroc(labels, scores, weights), expected)
    one_class = weighted_auroc(labels, scores, weights * ~labels)
    assert np.isnan(one_class).all()
    with pytest.raises(ValueError, match="finite"):
        weighted_auroc(labels, np.where(labels, np.nan, scores), weights)


def test_bh_q_values_equal_statsmodels_and_skip_nan():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.2, 0.5])
    expected = multipletests(p[np.isfinite(p)], method="fdr_bh")[1]
    q = bh_q_values(p)
    assert np.isnan(q[2])
    np.testing.assert_allclose(q[np.isfinite(p)], expected)


def test_fold_and_image_draws_are_seeded_and_shared_by_every_fold():
    a = HierarchicalBootstrap.draw([0, 1, 2], range(10), 50, seed=3)
    b = HierarchicalBootstrap.draw([2, 1, 0], range(10), 50, seed=3)
    np.testing.assert_array_equal(a.image_weights, b.image_weights)
    np.testing.assert_array_equal(a.fold_counts, b.fold_counts)
    assert (a.fold_counts.sum(axis=1) == 3).all() and (a.image_weights.sum(axis=1) == 10).all()
    with pytest.raises(ValueError, match="outside"):
        a.row_weights(np.array([11]))


def test_point_estimate_is_the_mean_of_fold_statistics():
    table = pd.DataFrame({"fold": [0, 0, 1], "image_index": [0, 1, 0], "value": [1.0, 3.0, 10.0]})
    bootstrap = HierarchicalBootstrap.for_table(table, 200, seed=0)
    point, resampled = bootstrap.statistic(
        table, lambda rows, w: weighted_mean(rows["value"].to_numpy(), w)[:, None]
    )
    assert point[0] == pytest.approx((2.0 + 10.0) / 2)
    assert resampled.shape == (200, 1)
    # NaN only where the drawn folds' rows all had weight zero (fold 1 without image 0)
    assert np.isfinite(resampled).mean() > 0.5
    assert np.nanmin(resampled) >= 1.0 and np.nanmax(resampled) <= 10.0


def _coverage(simulate, statistic, truth, repeats=400, n_resamples=400):
    hits = 0
    for repeat in range(repeats):
        table = simulate(np.random.default_rng(repeat))
        bootstrap = HierarchicalBootstrap.for_table(table, n_resamples, seed=repeat)
        _, resampled = bootstrap.statistic(table, statistic)
        low, high = interval(resampled[:, 0])
        hits += low <= truth <= high
    return hits / repeats


def test_interval_coverage_of_a_mean_is_close_to_95_percent():
    def simulate(rng):
        return pd.DataFrame(
            {"fold": 0, "image_index": np.arange(80), "value": rng.exponential(size=80)}
        )

    coverage = _coverage(
        simulate, lambda rows, w: weighted_mean(rows["value"].to_numpy(), w)[:, None], 1.0
    )
    assert 0.93 <= coverage <= 0.97


def test_interval_coverage_of_an_auroc_is_close_to_95_percent():
    from scipy.stats import norm

    shift = 1.0  # binormal: true AUROC = Phi(shift / sqrt(2))
    truth = norm.cdf(shift / np.sqrt(2))

    def simulate(rng):
        labels = rng.random(200) < 0.3
        return pd.DataFrame(
            {
                "fold": 0,
                "image_index": np.arange(200),
                "label": labels,
                "score": rng.normal(size=200) + shift * labels,
            }
        )

    def statistic(rows, w):
        return weighted_auroc(rows["label"].to_numpy(), rows["score"].to_numpy(), w)[:, None]

    assert 0.93 <= _coverage(simulate, statistic, truth) <= 0.97


def test_paired_p_value_rejects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    n = 150
    labels = rng.random(n) < 0.4
    good = rng.normal(size=n) + 1.5 * labels
    weak = rng.normal(size=n) + 0.2 * labels
    twin = good + rng.normal(scale=0.05, size=n)  # same information as ``good``
    table = pd.DataFrame({"fold": 0, "image_index": np.arange(n)})
    bootstrap = HierarchicalBootstrap.for_table(table, 1000, seed=1)

    def aurocs(rows, w):
        return np.column_stack([weighted_auroc(labels, s, w) for s in (good, weak, twin)])

    _, resampled = bootstrap.statistic(table, aurocs)
    assert bootstrap_p_value(resampled[:, 0] - resampled[:, 1]) < 0.01
    assert bootstrap_p_value(resampled[:, 0] - resampled[:, 2]) > 0.05
    assert bootstrap_p_value(np.full(10, np.nan)) != bootstrap_p_value(np.zeros(10))


def test_per_image_trend_is_one_for_rising_and_zero_for_flat_values():
    severity = np.tile(np.arange(1, 6), (3, 1))
    values = np.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1], [2, 2, 2, 2, 2]], dtype=float)
    np.testing.assert_allclose(per_image_trend(severity, values), [1.0, -1.0, 0.0])
