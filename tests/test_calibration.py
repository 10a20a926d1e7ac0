"""Calibrated candidate scores (tasks.calibration): monotone, bounded, reproduced from the cached features."""

from __future__ import annotations

import json
import re

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


def test_the_1_5b_calibration_is_refitted_from_its_committed_features() -> None:
    """The default 1.5B's own calibration (its head-set file, `fusion.weights: auto`) is the held-in fit of the
    features its `calibrate collect --config` run committed, and it was collected with that model."""
    from shared_core import RetrieverConfig
    from shared_core.views.model_fusion import model_fusion

    path = FEATURES.parent / "models" / "calibration_features_qwen1.5b.json"
    features = json.loads(path.read_text(encoding="utf-8"))
    assert "qwen1.5b" in features["meta"]["config"]
    fusion = model_fusion(RetrieverConfig.model_validate({"model": {"name": "qwen2.5-coder-1.5b-instruct"}}))
    assert fusion.calibration is not None
    np.testing.assert_allclose(fit_shipped(features), fusion.calibration, rtol=1e-6, atol=1e-9)


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


def test_a_models_own_calibration_is_used_and_checked() -> None:
    """`probability(..., weights)` uses a model's fit (its head set's `calibration`) instead of `WEIGHTS`; a fit of
    the wrong length is a ValueError naming the features and the refit command."""
    from shared_core.tasks.calibration import FEATURES, WEIGHTS, probability

    fused, n = np.array([0.1, 0.5, 0.9]), 20
    own = (10.0, 0.0, -5.0)
    np.testing.assert_allclose(probability(fused, n, own), 1 / (1 + np.exp(-(10 * fused - 5))))
    np.testing.assert_allclose(probability(fused, n), probability(fused, n, WEIGHTS))
    with pytest.raises(ValueError, match=rf"one weight per feature {re.escape(str(list(FEATURES)))}.*calibrate fit"):
        probability(fused, n, (1.0, 2.0))
