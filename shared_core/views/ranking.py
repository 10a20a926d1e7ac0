"""From per-view unit scores to a ranking: fusion, entity expansion, reasons, document-level scores.

Within a document the views (attention, dense, lexical) are min-max normalised and fused, and each unit takes a share
of its neighbours' fused scores (`views.context`; a one-unit document's unit scores 1.0: it is that document's best,
and `scale_by_document` ranks it among the others); the best
`entities.direct_hits` units keep their place, the units the top entities pull in come right after
them (unless their own score ranks them higher), then every other unit by fused score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from shared_core.config import EntitiesConfig, FusionConfig
from shared_core.document import Hit, Unit
from shared_core.views.context import with_context
from shared_core.views.entities import EntityIndex, Expansion, expand
from shared_core.views.fusion import adaptive_weights, fuse, minmax

REASON_TOP = 5  # a view is named as a reason for a unit it ranks in its own top 5


@dataclass
class UnitRanking:
    """Final score, fused score, per-view raw scores and reasons of every unit of one document."""

    final: np.ndarray
    fused: np.ndarray
    views: dict[str, np.ndarray]
    reasons: list[list[str]]
    expansions: dict[int, Expansion] = field(default_factory=dict)

    def hits(self, units: Sequence[Unit], document_id: str, document_index: int) -> list[Hit]:
        """Every unit as a hit, in document order, with its per-view, fused and entity scores and its reasons."""
        out = []
        for k, u in enumerate(units):
            scores = {name: float(v[k]) for name, v in self.views.items()}
            scores["fused"] = float(self.fused[k])
            if k in self.expansions:
                scores["entity"] = self.expansions[k].entity_score
            out.append(
                Hit(
                    document_id=document_id,
                    document_index=document_index,
                    start=u.start,
                    end=u.end,
                    text=u.text,
                    score=float(self.final[k]),
                    scores=scores,
                    reasons=self.reasons[k],
                    unit_index=u.index,
                )
            )
        return out


def fuse_views(views: dict[str, np.ndarray], config: FusionConfig) -> np.ndarray:
    """Fused score in [0, 1]; a single view is just min-max normalised."""
    if len(views) == 1:
        return minmax(next(iter(views.values())))
    return fuse(views, config)


def rank_units(
    views: dict[str, np.ndarray],
    units: Sequence[Unit],
    entity_index: EntityIndex | None,
    fusion: FusionConfig,
    entities: EntitiesConfig,
    query: str | None = None,
) -> UnitRanking:
    """Fuse the views (with per-query weights when `fusion.adaptive` says so), expand through entities and give
    each unit its final score and reasons."""
    if fusion.adaptive != "none" and len(views) > 1:
        fusion = fusion.model_copy(update={"weights": adaptive_weights(views, fusion)})
    fused = with_context(fuse_views(views, fusion), [u.paragraph for u in units], fusion)
    if len(units) == 1:
        fused = np.ones(1)  # a one-unit document's only unit is its best; documents are compared by scale_by_document
    final = fused.copy()
    order = np.argsort(-fused, kind="stable")
    direct = [int(i) for i in order[: entities.direct_hits]]
    expansions: list[Expansion] = []
    if entity_index is not None and entities.enabled and len(units):
        expansions = expand(entity_index, fused, units, entities, exclude=set(direct), query=query)
        floor = float(fused[direct[-1]]) if direct else 1.0
        for rank, exp in enumerate(expansions, 1):
            # right after the direct hits, in expansion order; a unit scoring higher on its own keeps that score
            final[exp.unit_index] = max(final[exp.unit_index], floor * (1.0 - 1e-3 * rank))
    tops = {name: set(np.argsort(-v, kind="stable")[:REASON_TOP].tolist()) for name, v in views.items()}
    by_unit = {e.unit_index: e for e in expansions}
    reasons: list[list[str]] = []
    for i in range(len(units)):
        why = [name for name in views if i in tops[name]]
        if i in by_unit:
            name = entity_index.display_name(by_unit[i].entity) if entity_index else by_unit[i].entity
            why.append(f"entity:{name}")
        reasons.append(why or ["fused"])
    return UnitRanking(final=final, fused=fused, views=views, reasons=reasons, expansions=by_unit)


def document_scores(per_document_views: Sequence[dict[str, np.ndarray]], fusion: FusionConfig) -> list[float]:
    """One score per document, relative to the documents given together: each view's best unit, fused across them."""
    if len(per_document_views) == 1:
        return [1.0]
    names = list(per_document_views[0])
    best = {n: np.array([v[n].max(initial=-np.inf) if len(v[n]) else 0.0 for v in per_document_views]) for n in names}
    return [float(x) for x in fuse_views(best, fusion)]


def scale_by_document(
    per_document_hits: Sequence[list[Hit]], per_document_views: Sequence[dict[str, np.ndarray]], fusion: FusionConfig
) -> None:
    """Several documents of one query: scale each hit by its document's score relative to the others
    (0.5 + 0.5·document score), so the best document's hits come first among equals; one document is left as is."""
    if len(per_document_hits) < 2:
        return
    weights = document_scores(per_document_views, fusion)
    for hits, weight in zip(per_document_hits, weights, strict=True):
        for h in hits:
            h.scores["document"] = weight
            h.score *= 0.5 + 0.5 * weight


def top_hits(per_document_hits: Sequence[list[Hit]], top_k: int) -> list[Hit]:
    """The `top_k` best hits across documents (ties: earlier document, earlier unit)."""
    hits = [h for hits in per_document_hits for h in hits]
    hits.sort(key=lambda h: (-h.score, h.document_index, h.start))
    return hits[:top_k]
