"""Pruning's selection on scored units: direct units by score, entity background, neighbours, then exact recounts
until the text fits the budget (see `tasks.pruning` for the rules; also used by the benchmark's baselines)."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared_core.document import Hit, Unit
from shared_core.tasks.pruned import (
    DEFAULT_ENTITY_SHARE,
    DEFAULT_MARKER,
    WORD,
    Granularity,
    KeptSpan,
    PrunedDocument,
    PruneOptions,
    Reason,
    TokenCounter,
    check_budget,
    trivial_result,
)

logger = logging.getLogger(__name__)

MAX_FILL_ATTEMPTS = 32
"""Exact recounts tried after the estimate-based selection, to use budget the estimates left over."""

# ---------------------------------------------------------------------------------------------------------------
# Selection on scored units (also used by the benchmark's baselines)


def prune_hits(
    text: str,
    units: Sequence[Unit],
    hits: Sequence[Hit],
    budget_tokens: int,
    counter: TokenCounter,
    last: Collection[int] = (),
    **kwargs: Any,
) -> PrunedDocument:
    """`prune_scores` with the retriever's hits: direct order by fused score, entity background from `reasons`;
    the units in `last` (heading-only units) are chosen only after every other one, never as entity background."""
    if len(hits) != len(units) or any((h.start, h.end) != (u.start, u.end) for h, u in zip(hits, units, strict=True)):
        raise ValueError("hits must be the units of the document, in document order (what score_units returns)")
    scores = [float(h.scores.get("fused", h.score)) for h in hits]
    if last:
        floor = min(scores) - 1.0
        scores = [floor if k in last else score for k, score in enumerate(scores)]
    entity_units = sorted(
        (k for k, h in enumerate(hits) if k not in last and any(r.startswith("entity:") for r in h.reasons)),
        key=lambda k: (-hits[k].score, k),
    )
    entities = {k: next(r[7:] for r in hits[k].reasons if r.startswith("entity:")) for k in entity_units}
    return prune_scores(text, units, scores, budget_tokens, counter, entities=entities, **kwargs)


def prune_scores(
    text: str,
    units: Sequence[Unit],
    scores: Sequence[float],
    budget_tokens: int,
    counter: TokenCounter,
    *,
    entities: Mapping[int, str] | None = None,
    neighbours: int = 0,
    marker: str = DEFAULT_MARKER,
    entity_share: float = DEFAULT_ENTITY_SHARE,
    granularity: Granularity = "sentence",
    document_id: str | None = None,
    document_index: int = 0,
) -> PrunedDocument:
    """Prune `text` given one score per unit (higher = keep first) and, optionally, entity background units.

    `entities` maps unit positions to the entity that pulls them in, in priority order (best first). Any scorer
    fits here (BM25, dense): the benchmark prunes its baselines through this same function.
    """
    budget = check_budget(budget_tokens)
    PruneOptions(None, neighbours, marker, entity_share)
    if len(scores) != len(units):
        raise ValueError(f"scores must hold one score per unit ({len(units)}), got {len(scores)}")
    early = trivial_result(text, budget, counter, document_id, document_index)
    if early is not None:
        return early
    base: dict[str, Any] = {
        "budget_tokens": budget,
        "document_id": document_id,
        "document_index": document_index,
        "original_length": len(text),
    }
    total = counter.count(text)
    if not units:
        return PrunedDocument(
            text="", spans=(), tokens_kept=0, tokens_original=total, status="no_units", note="no units", **base
        )
    plan = _Plan(text, units, counter, marker)
    entities = dict(entities or {})
    direct_order = sorted(range(len(units)), key=lambda k: (-scores[k], k))
    groups = [_Group(k, "direct") for k in direct_order]
    entity_groups = [_Group(k, "entity", entities[k]) for k in entities if 0 <= k < len(units)]
    reserve = int(budget * float(entity_share)) if entity_groups else 0
    context = _context(units, neighbours, granularity)
    chosen: list[_Group] = []
    rejected: list[_Group] = []
    for group, limit in [
        *((g, budget - reserve) for g in groups),
        *((g, budget) for g in entity_groups),
        *((g, budget) for g in groups),
    ]:
        if group.unit in plan.kept_set:
            continue
        members = [group.unit, *(k for k in context(group.unit) if k not in plan.kept_set)]
        if plan.try_add(members, limit):
            group.members = members
            chosen.append(group)
        elif group not in rejected:
            rejected.append(group)
    exact = counter.count(plan.render())
    while exact > budget and chosen:
        plan.remove(chosen.pop().members)
        exact = counter.count(plan.render())
    attempts = 0
    # what the estimates left over goes to the entity background first (its reserve was cut short), then by score
    rejected.sort(key=lambda g: g.reason != "entity")
    for group in rejected:
        if attempts >= MAX_FILL_ATTEMPTS or exact >= budget:
            break
        if group.unit in plan.kept_set:
            continue
        members = [group.unit, *(k for k in context(group.unit) if k not in plan.kept_set)]
        if not plan.try_add(members, plan.estimate + (budget - exact)):
            continue
        attempts += 1
        count = counter.count(plan.render())
        if count <= budget:
            group.members = members
            chosen.append(group)
            exact = count
        else:
            plan.remove(members)
    if not chosen:
        return _truncate(text, units[direct_order[0]], scores[direct_order[0]], budget, counter, marker, total, base)
    why: dict[int, KeptSpan] = {}
    for group in chosen:
        for k in group.members:
            u = units[k]
            reason: Reason = group.reason if k == group.unit else "neighbour"
            entity = group.entity if k == group.unit else None
            why[k] = KeptSpan(u.start, u.end, u.text, reason, u.index, float(scores[k]), entity)
    spans = tuple(why[k] for k in sorted(plan.kept))
    rendered = plan.render()
    return PrunedDocument(
        text=rendered,
        spans=spans,
        tokens_kept=exact,
        tokens_original=total,
        status="pruned",
        pieces=plan.pieces(),
        **base,
    )


@dataclass(eq=False)
class _Group:
    """A candidate: one unit chosen for a reason, with the neighbours it brought (`members`, once kept)."""

    unit: int
    reason: Reason
    entity: str | None = None
    members: list[int] = field(default_factory=list)


def _context(units: Sequence[Unit], neighbours: int, granularity: str) -> Callable[[int], list[int]]:
    """Neighbour positions of a unit: `neighbours` on each side, nearest first (sentences stay in their paragraph)."""

    def around(k: int) -> list[int]:
        out = []
        for d in range(1, neighbours + 1):
            for j in (k - d, k + d):
                if 0 <= j < len(units) and (granularity != "sentence" or units[j].paragraph == units[k].paragraph):
                    out.append(j)
        return out

    return around


def _joinable(gap: str) -> bool:
    """Two units are contiguous when only whitespace lies between them (then that whitespace is kept as is)."""
    return not gap.strip()


class _Plan:
    """A set of kept units with an incremental token estimate of their rendering (exact counts come separately)."""

    def __init__(self, text: str, units: Sequence[Unit], counter: TokenCounter, marker: str) -> None:
        self.text, self.units, self.marker = text, units, marker
        self.cost = counter.count_many([u.text for u in units])
        n = len(units)
        self.join_ok = [_joinable(text[units[k].end : units[k + 1].start]) for k in range(n - 1)]
        pairs = [text[units[k].start : units[k + 1].end] for k in range(n - 1)]
        pair_cost = counter.count_many(pairs)
        self.join_cost = [max(0, pair_cost[k] - self.cost[k] - self.cost[k + 1]) for k in range(n - 1)]
        self.marker_cost = counter.count(marker)
        if n >= 2:  # in context a marker's edge spaces usually merge into the next word: measure it once
            joined = counter.count(units[0].text + marker + units[1].text)
            self.marker_cost = max(0, joined - self.cost[0] - self.cost[1])
        self.kept: list[int] = []  # sorted unit positions
        self.kept_set: set[int] = set()
        self.estimate = 0

    def _junction(self, a: int, b: int) -> int:
        return self.join_cost[a] if b == a + 1 and self.join_ok[a] else self.marker_cost

    def _delta_add(self, k: int) -> int:
        i = bisect.bisect_left(self.kept, k)
        prev = self.kept[i - 1] if i > 0 else None
        nxt = self.kept[i] if i < len(self.kept) else None
        delta = self.cost[k]
        if prev is not None:
            delta += self._junction(prev, k)
        if nxt is not None:
            delta += self._junction(k, nxt)
        if prev is not None and nxt is not None:
            delta -= self._junction(prev, nxt)
        return delta

    def try_add(self, members: Sequence[int], limit: int) -> bool:
        """Add `members` if the estimate stays within `limit`; otherwise leave the plan unchanged."""
        added: list[int] = []
        for k in members:
            if k in self.kept_set:
                continue
            self.estimate += self._delta_add(k)
            bisect.insort(self.kept, k)
            self.kept_set.add(k)
            added.append(k)
        if self.estimate <= limit:
            return True
        self.remove(added)
        return False

    def remove(self, members: Sequence[int]) -> None:
        """Drop `members` (those kept) from the plan, in reverse order of addition."""
        for k in reversed(list(members)):
            i = bisect.bisect_left(self.kept, k)
            if i < len(self.kept) and self.kept[i] == k:
                del self.kept[i]
                self.kept_set.discard(k)
                self.estimate -= self._delta_add(k)

    def runs(self) -> list[tuple[int, int]]:
        """(first, last) unit positions of each contiguous run of kept units."""
        runs: list[tuple[int, int]] = []
        for k in self.kept:
            if runs and k == runs[-1][1] + 1 and self.join_ok[runs[-1][1]]:
                runs[-1] = (runs[-1][0], k)
            else:
                runs.append((k, k))
        return runs

    def pieces(self) -> tuple[tuple[int, int], ...]:
        """Char spans of the kept runs in the original text."""
        return tuple((self.units[a].start, self.units[b].end) for a, b in self.runs())

    def render(self) -> str:
        """Kept runs in document order joined by the marker; inside a run the original text is kept."""
        return self.marker.join(self.text[self.units[a].start : self.units[b].end] for a, b in self.runs())


def _truncate(
    text: str,
    unit: Unit,
    score: float,
    budget: int,
    counter: TokenCounter,
    marker: str,
    total: int,
    base: dict[str, Any],
) -> PrunedDocument:
    """No whole unit fits: keep the longest word-boundary prefix of the best unit that fits (marker tail if room)."""
    ends = [m.end() for m in WORD.finditer(unit.text)]
    tail = marker.rstrip()

    def fits(n_words: int, with_tail: bool) -> int | None:
        piece = unit.text[: ends[n_words - 1]] + (tail if with_tail else "")
        count = counter.count(piece)
        return count if count <= budget else None

    lo, hi = 0, len(ends)  # largest n with a fitting prefix of n words (counts grow with n)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid, False) is not None:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return PrunedDocument(
            text="",
            spans=(),
            tokens_kept=0,
            tokens_original=total,
            status="nothing_fits",
            note=f"budget of {budget} tokens is smaller than the first word of the best unit",
            **base,
        )
    end = ends[lo - 1]
    with_tail = bool(tail) and fits(lo, True) is not None
    pruned = unit.text[:end] + (tail if with_tail else "")
    span = KeptSpan(unit.start, unit.start + end, unit.text[:end], "direct", unit.index, float(score))
    return PrunedDocument(
        text=pruned,
        spans=(span,),
        tokens_kept=counter.count(pruned),
        tokens_original=total,
        status="truncated",
        pieces=((span.start, span.end),),
        note=f"no whole unit fits {budget} tokens: the best unit is cut at a word boundary",
        **base,
    )
