"""Fusion of per-unit score views (attention, dense, lexical) into one score per unit of a document."""

from __future__ import annotations

import numpy as np

from shared_core.config.sections import FusionConfig


def adaptive_weights(views: dict[str, np.ndarray], config: FusionConfig) -> dict[str, float]:
    """The weights `config` gives these views for this query: its fixed weights, or (``adaptive='agreement'``) each
    positive weight times (top-k overlap of the view with the others / mean overlap) ** strength."""
    weights = config.view_weights
    names = [name for name in views if weights.get(name, 0) > 0]
    if config.adaptive == "none" or len(names) < 2:
        return weights
    arrays = {name: _check_scores(views[name], f"view {name!r}") for name in names}
    k = max(1, min(config.adaptive_k, min(a.size for a in arrays.values())))
    tops = {name: set(np.argsort(-a, kind="stable")[:k].tolist()) for name, a in arrays.items()}
    agree = {v: float(np.mean([len(tops[v] & tops[u]) / k for u in names if u != v])) for v in names}
    mean = float(np.mean(list(agree.values())))
    if mean <= 0:
        return weights
    for name in names:
        weights[name] *= (max(agree[name], 1e-3) / mean) ** config.adaptive_strength
    return weights


def _check_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    """Return `scores` as a 1-D float64 array, refusing NaN/inf with an error that names the view."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of unit scores, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); fix the view before fusing")
    return array


def minmax(scores: np.ndarray) -> np.ndarray:
    """Scale one document's scores to [0, 1]; a constant (or single) score carries no ranking, so it maps to zeros."""
    array = _check_scores(scores)
    if array.size == 0:
        return array
    low, high = float(array.min()), float(array.max())
    if high - low <= 0.0:
        return np.zeros_like(array)
    return (array - low) / (high - low)


def ranks(scores: np.ndarray) -> np.ndarray:
    """1-based competition ranks, highest score first; ties share the best rank so their order never matters."""
    array = _check_scores(scores)
    ordered = np.sort(array)[::-1]
    # rank = 1 + number of scores strictly greater than this one
    return 1 + np.searchsorted(-ordered, -array, side="left")


def fuse(views: dict[str, np.ndarray], config: FusionConfig) -> np.ndarray:
    """Fused score per unit (float64, in [0, 1]) from equal-length views, combined as `config` says."""
    if not views:
        raise ValueError("fuse() needs at least one view")
    weights = config.view_weights
    missing = sorted(name for name in views if name not in weights)
    if missing:
        raise ValueError(
            f"no fusion weight for view(s) {missing}; configured weights: {sorted(weights)}. "
            "Add them to fusion.weights (0 switches a view off)."
        )
    arrays = {name: _check_scores(scores, f"view {name!r}") for name, scores in views.items()}
    lengths = {name: array.size for name, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"views must score the same units, got lengths {lengths}")
    total = sum(weights[name] for name in arrays)
    if total <= 0:
        raise ValueError(f"all fused views {sorted(arrays)} have weight 0; at least one must be positive")
    size = next(iter(lengths.values()))
    fused = np.zeros(size, dtype=np.float64)
    for name, array in arrays.items():
        weight = weights[name]
        if weight == 0:
            continue
        if config.method == "weighted":
            fused += weight * minmax(array)
        else:
            fused += weight / (config.rrf_k + ranks(array))
    if config.method == "weighted":
        return fused / total
    return fused * (config.rrf_k + 1) / total
