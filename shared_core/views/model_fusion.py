"""`fusion.weights: auto`: the fusion weights (and candidate-score calibration) shipped for a model with its head set.

Fusion weights depend on the model: a view's weight is worth what that model's attention is worth. A shipped
head-set file (`shared_core/head_sets/`) may carry the weights learned with its heads, one set for the units of
documents and one for candidate sets, and the Platt weights that turn the candidates' fused score into P(relevant)
(`tasks.calibration`):

    fusion:
      documents: {attention: 0.75, dense: 0.16, lexical: 0.09}
      candidates: {attention: 1.0, dense: 0.5, lexical: 2.0}
    calibration: [24.2, -1.25, -2.95]     # weights of tasks.calibration.FEATURES, then the intercept

They apply when `fusion.weights` is 'auto' and the heads read are that file's: `attention.heads: auto` (the shipped
set) or the path of a head-set file carrying such blocks (a copy of a shipped set naming a query adapter, a set of
your own); otherwise, and for a model without them, the weights are `fusion.weights` or `DEFAULT_FUSION_WEIGHTS` and
the calibration is the default one.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared_core.config import ConfigError, FusionConfig, RetrieverConfig
from shared_core.engine.heads import head_set_file, load_head_file
from shared_core.models.loading import model_id

KINDS = ("documents", "candidates")
"""The two kinds of input a head-set file's `fusion` block may give weights for."""


@dataclass(frozen=True)
class ModelFusion:
    """The fusion sections a retriever uses, with `weights` resolved to a mapping, and where they came from."""

    documents: FusionConfig
    candidates: FusionConfig
    calibration: tuple[float, ...] | None
    """Platt weights of the candidates' fused score (tasks.calibration.FEATURES, then the intercept); None = the
    default calibration."""
    source: str | None
    """The head-set file that gave them; None = the config's own weights or the defaults."""


def model_fusion(config: RetrieverConfig) -> ModelFusion:
    """The fusion of `config`: under `fusion.weights: auto`, the weights and calibration of the head-set file read
    (the model's shipped one by `heads: auto`, or the file `heads` names) where it has them, else the config's (or
    default) weights."""
    fusion = config.fusion
    fixed = fusion.model_copy(update={"weights": fusion.view_weights})
    path = head_set_file(config.attention, model_id(config.model)) if fusion.weights == "auto" else None
    if path is None:
        return ModelFusion(fixed, fixed, None, None)
    shipped = shipped_fusion(path)
    if not shipped:
        return ModelFusion(fixed, fixed, None, None)
    weights, calibration = shipped
    documents, candidates = (fusion.model_copy(update={"weights": weights.get(k, fixed.weights)}) for k in KINDS)
    return ModelFusion(documents, candidates, calibration, path)


@functools.lru_cache(maxsize=16)
def shipped_fusion(path: str | Path) -> tuple[dict[str, dict[str, float]], tuple[float, ...] | None] | None:
    """The `fusion` weights by kind and the `calibration` of a head-set file (checked: `ConfigError` naming the
    file), or None when it has neither."""
    data = load_head_file(path)
    block, calibration = data.get("fusion"), data.get("calibration")
    if block is None and calibration is None:
        return None
    weights: dict[str, dict[str, float]] = {}
    if block is not None:
        if not isinstance(block, dict) or not set(block) <= set(KINDS):
            raise ConfigError(f"{path}: 'fusion' must map {' and/or '.join(KINDS)} to fusion weights")
        for kind, value in block.items():
            try:
                weights[kind] = FusionConfig(weights=value).view_weights
            except ValueError as exc:
                raise ConfigError(f"{path}: fusion.{kind}: {exc}") from exc
    return weights, None if calibration is None else _calibration(calibration, path)


def _calibration(value: Any, path: str | Path) -> tuple[float, ...]:
    """A head-set file's `calibration`: a list of finite numbers (the feature weights, then the intercept), the first
    positive so the probability rises with the fused score."""
    if (
        not isinstance(value, list)
        or len(value) < 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        or value[0] <= 0
    ):
        raise ConfigError(
            f"{path}: 'calibration' must be a list of finite numbers (feature weights, then the intercept) whose "
            f"first weight is positive, got {value!r}"
        )
    return tuple(float(v) for v in value)


__all__ = ["KINDS", "ModelFusion", "model_fusion", "shipped_fusion"]
