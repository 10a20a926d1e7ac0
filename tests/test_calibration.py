"""Calibrated candidate scores (tasks.calibration): monotone, bounded, reproduced from the cached features."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.calibrate import FEATURES, candidate_table, fit_logistic, fit_shipped, isotonic, reliability
from shared_core.tasks import calibration

fused_values = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@given(a=fused_values, b=fused_values, n=st.integers(min_value=1, max_value=500))
def test_probability_is_monotone_in_the_fused_score(a: float, b: float, n: int) -> None:
    lo, hi = sorted((a, b))
    p_lo, p_hi = calibration.probability(np.array([lo, hi]), n)
    assert 0.0 <= p_lo <= p_hi <= 1.0
    if calibration.EPS <= lo < hi <= 1 - calibration.EPS and hi - lo > 1e-9:
        assert p_lo < p_hi  # strictly: the calibrated ranking is the fused one, no new ties


def test_the_slope_is_positive_and_the_scale_spans_the_interval() -> None:
    assert calibration.WEIGHTS[0] > 0
    p = calibration.probability(np.array([0.0, 0.05, 0.6, 1.0]), 10)
    assert p[0] < 0.05 and p[-1] > 0.95 and np.all(np.diff(p) > 0)


def test_shipped_constants_are_refitted_from_the_committed_features() -> None:
    features = json.loads(FEATURES.read_text(encoding="utf-8"))
    assert {r["split"] for r in features["rows"]} == {"held-in", "held-out"}
    weights = fit_shipped(features)
    np.testing.assert_allclose(weights, calibration.WEIGHTS, rtol=1e-6, atol=1e-9)
    table = candidate_table(features["rows"])
    assert set(np.unique(table["q"][table["split"] == "held-in"])) <= set(range(20))  # fitted on held-in only


def test_logistic_fit_recovers_a_known_model() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(size=4000), np.ones(4000)])
    y = (rng.random(4000) < 1 / (1 + np.exp(-(2.0 * x[:, 0] - 1.0)))).astype(float)
    np.testing.assert_allclose(fit_logistic(x, y), [2.0, -1.0], atol=0.2)


def test_isotonic_and_reliability() -> None:
    xs, fitted = isotonic(np.array([0.3, 0.1, 0.2, 0.4]), np.array([1, 0, 1, 0]))
    assert list(xs) == [0.1, 0.2, 0.3, 0.4] and np.all(np.diff(fitted) >= 0)
    rows, ece, brier = reliability(np.array([0.05, 0.05, 0.95, 0.95]), np.array([0, 0, 1, 1]))
    assert rows[0]["count"] == 2 and rows[-1]["observed"] == 1.0
    assert ece == pytest.approx(0.05) and brier == pytest.approx(0.0025)
