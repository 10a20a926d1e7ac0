"""A unit's fused score informed by its neighbours: the passages a question needs run over several units.

A meeting's discussion of a topic, or a paper's paragraph on a result, spans many sentences; a lone sentence that
matches the question's words elsewhere is more often noise. So each unit keeps most of its own fused score and takes
a share (`fusion.context`) from the units within `fusion.context_window` on either side, and another share
(`fusion.paragraph_context`) from those of them in its own paragraph, nearer neighbours weighing more (triangular
weights: a unit d positions away weighs window + 1 - d). This is passage-level evidence (Callan, SIGIR 1994) for
units; it is measured in docs/quality.md ("Context: a unit's neighbours").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared_core.config import FusionConfig


def neighbour_mean(scores: np.ndarray, window: int, groups: Sequence[int] | None = None) -> np.ndarray:
    """Per unit, the triangular-weighted mean score of the units within `window` positions on either side (the
    unit itself excluded; only those in the unit's group when `groups` is given). A unit without any such
    neighbour gets its own score."""
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.size
    group = None if groups is None else np.asarray(groups)
    total = np.zeros(n)
    weight = np.zeros(n)
    for d in range(1, min(window, n - 1) + 1):
        w = float(window + 1 - d)
        same = np.ones(n - d, dtype=bool) if group is None else group[d:] == group[:-d]
        # unit i and unit i + d are each other's neighbour at distance d
        total[:-d] += np.where(same, w * scores[d:], 0.0)
        weight[:-d] += np.where(same, w, 0.0)
        total[d:] += np.where(same, w * scores[:-d], 0.0)
        weight[d:] += np.where(same, w, 0.0)
    return np.divide(total, weight, out=scores.copy(), where=weight > 0)


def with_context(fused: np.ndarray, paragraphs: Sequence[int], config: FusionConfig) -> np.ndarray:
    """`fused` with `config.context` of each unit's score from its neighbours and `config.paragraph_context` from
    its neighbours in the same paragraph (`paragraphs`: each unit's paragraph index). Stays in [0, 1]. Weighted
    fusion only: RRF's reciprocal ranks are left as they are."""
    fused = np.asarray(fused, dtype=np.float64)
    if len(paragraphs) != fused.size:
        raise ValueError(f"with_context: {fused.size} scores but {len(paragraphs)} paragraph indices")
    share, para_share = config.context, config.paragraph_context
    if fused.size < 2 or share + para_share == 0 or config.method != "weighted":
        return fused
    out = (1.0 - share - para_share) * fused
    if share:
        out += share * neighbour_mean(fused, config.context_window)
    if para_share:
        out += para_share * neighbour_mean(fused, config.context_window, paragraphs)
    return out
