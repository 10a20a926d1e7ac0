"""Calibrated candidate scores: a candidate set's fused score mapped to an estimate of P(relevant).

Platt scaling: `P = sigmoid(a · fused + b · ln(n) + c)`, `n` the number of distinct candidates in the call.
The slope `a` is positive, so within one call the probability is strictly increasing in the fused score and the
ranking is the fused one; the set-size term moves every candidate of a call alike (attention is shared among the
candidates and the lexical IDF is computed over the set, so the same fused value means more in a larger set).

Fitted on held-in labelled candidates only: HotpotQA dev (distractor) questions 0-19 (`benchmarks.rerank.HELD_IN`),
each question's BM25 top 5, 10, 20 and own 10 paragraphs, and top 50 for questions 0-3 (gold = the supporting
paragraphs). `WEIGHTS` are SmolLM2-135M-Instruct's (with all-MiniLM-L6-v2 and BM25, weights 1 / 0.5 / 2), the
calibration of every model without its own; a model may ship its own fit in its head-set file (`calibration:`, used
under `fusion.weights: auto`, `views.model_fusion`), as the default 1.5B does. Refit with `python -m
benchmarks.calibrate fit` (reads benchmarks/results/calibration_features.json, written by `python -m
benchmarks.calibrate collect`; `--config` and `--out` for another model's); refitted 2026-12-06 for the canonical
prompt order. Reliability on held-out questions: docs/rerank.md.
A config with other models or weights changes the fused scale: the probability is then only a monotone score.
"""

from __future__ import annotations

import numpy as np

FEATURES: tuple[str, ...] = ("fused", "ln_n")
"""The features the weights apply to, in order: `fused`, `logit_fused` (its logit) and `ln_n` (ln of the set size)."""
WEIGHTS: tuple[float, ...] = (24.216233303759513, -1.2513399448872975, -2.9524794214099983)
"""Fitted weights of `FEATURES`, then the intercept."""
EPS = 1e-4
"""The fused score is clipped to [EPS, 1 - EPS] before its logit."""


def features(fused: np.ndarray | float, n: np.ndarray | int) -> dict[str, np.ndarray]:
    """Every feature a calibration may use, for fused scores `fused` in calls of `n` distinct candidates."""
    f = np.asarray(fused, dtype=np.float64)
    clipped = np.clip(f, EPS, 1.0 - EPS)
    ln_n = np.log(np.maximum(np.asarray(n, dtype=np.float64), 1.0))
    return {"fused": f, "logit_fused": np.log(clipped / (1.0 - clipped)), "ln_n": np.broadcast_to(ln_n, f.shape)}


def probability(fused: np.ndarray | float, n: np.ndarray | int, weights: tuple[float, ...] | None = None) -> np.ndarray:
    """P(relevant) of candidates with fused score `fused` in a call of `n` distinct candidates, under `weights`
    (of `FEATURES`, then the intercept: a model's own, from its head-set file) or the default `WEIGHTS`."""
    weights = WEIGHTS if weights is None else weights
    if len(weights) != len(FEATURES) + 1:
        raise ValueError(
            f"a calibration has one weight per feature {list(FEATURES)} and an intercept ({len(FEATURES) + 1} "
            f"numbers), got {len(weights)}: refit it with `python -m benchmarks.calibrate fit`"
        )
    values = features(fused, n)
    z = weights[-1] + sum(w * values[name] for name, w in zip(FEATURES, weights, strict=False))
    return np.asarray(1.0 / (1.0 + np.exp(-z)))
