"""Prune long documents to a reader's token budget: the units a query needs, their context, in document order.

A LongRAG-style reader gets long retrieval units (sections, whole documents) but has a smaller budget. `prune` scores
every unit once with the retriever (`AttentionRetriever.score_units`) and keeps, within `budget_tokens` counted
under the reader's tokenizer:

1. *direct* units, best fused score first, up to the budget minus the entity share;
2. *entity* background: the units the retriever pulled in through the query's top entities (the `entity:NAME`
   reasons of its hits), in the retriever's order, up to the whole budget;
3. more direct units with whatever is left (an unused entity share is not wasted).

Each kept unit brings its `neighbours` (that many units on each side; within the paragraph for sentences) or is not
kept at all. Kept units are rendered in document order; contiguous ones keep the original text between them, and
`marker` stands wherever text was cut between two kept pieces (not before the first or after the last). The budget
counts the markers too and is never exceeded: the selection runs on per-unit token estimates, then the final text
is counted exactly and units are dropped (last chosen first) or added (next candidates) until it fits.

Edge cases (see docs/pruning.md): a budget that is not a positive int raises; a document whose whole text fits the
budget comes back unchanged (status "whole"); a blank document has no units and gives an empty text (status
"no_units"); when no unit fits, the best unit is cut at the last word boundary that fits (status "truncated"), and
if not even its first word fits the result is empty (status "nothing_fits").
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import logging
import numbers
import re
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .document import Document, Hit, Unit
from .validation import check_query, coerce_documents

if TYPE_CHECKING:
    from .retriever import AttentionRetriever

logger = logging.getLogger(__name__)

DEFAULT_MARKER = " … "
DEFAULT_ENTITY_SHARE = 0.25
MAX_FILL_ATTEMPTS = 32
"""Exact recounts tried after the estimate-based selection, to use budget the estimates left over."""

Granularity = Literal["sentence", "paragraph"]
Status = Literal["pruned", "whole", "truncated", "no_units", "nothing_fits"]
Reason = Literal["direct", "neighbour", "entity", "whole"]
_WORD = re.compile(r"\S+")


# ---------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class KeptSpan:
    """One kept piece of the original text: `text == original[start:end]`, and why it was kept.

    `reason` is "direct" (its own score), "entity" (pulled in through `entity`, a top entity of the query),
    "neighbour" (context around a kept unit) or "whole" (the document fitted the budget). `score` is the unit's
    fused score in [0, 1] within its document (None for "whole").
    """

    start: int
    end: int
    text: str
    reason: Reason
    unit_index: int | None = None
    score: float | None = None
    entity: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (adapters store it in metadata)."""
        return {
            "start": self.start,
            "end": self.end,
            "reason": self.reason,
            "unit_index": self.unit_index,
            "score": self.score,
            "entity": self.entity,
        }


@dataclass(frozen=True)
class PrunedDocument:
    """A document cut down to a token budget.

    `text` is the pruned text; `spans` the kept pieces in document order (char offsets into the original text);
    `tokens_kept` the exact token count of `text` under the reader's tokenizer (never above `budget_tokens`);
    `tokens_original` that of the original text; `original_length` its length in characters; `pieces` the char
    spans of the contiguous kept runs (what the markers separate). `status` says which rule applied ("pruned",
    "whole", "truncated", "no_units", "nothing_fits") and `note` explains the unusual ones.
    """

    text: str
    spans: tuple[KeptSpan, ...]
    tokens_kept: int
    tokens_original: int
    original_length: int
    budget_tokens: int
    status: Status
    document_id: str | None = None
    document_index: int = 0
    note: str | None = None
    pieces: tuple[tuple[int, int], ...] = ()

    @property
    def kept_share(self) -> float:
        """Share of the original tokens kept (0 for an empty document)."""
        return self.tokens_kept / self.tokens_original if self.tokens_original else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (the adapters' metadata and the benchmark read it)."""
        return {
            "document_id": self.document_id,
            "document_index": self.document_index,
            "text": self.text,
            "spans": [s.to_dict() for s in self.spans],
            "pieces": [list(p) for p in self.pieces],
            "tokens_kept": self.tokens_kept,
            "tokens_original": self.tokens_original,
            "original_length": self.original_length,
            "budget_tokens": self.budget_tokens,
            "status": self.status,
            "note": self.note,
        }


# ---------------------------------------------------------------------------------------------------------------
# Options and token counting


@dataclass(frozen=True)
class PruneOptions:
    """How to prune: unit granularity (None = the retriever's), context, marker, entity share, reader tokenizer."""

    unit: Granularity | None = None
    neighbours: int = 0
    marker: str = DEFAULT_MARKER
    entity_share: float = DEFAULT_ENTITY_SHARE
    reader_tokenizer: Any = None

    def __post_init__(self) -> None:
        if self.unit is not None and self.unit not in ("sentence", "paragraph"):
            raise ValueError(f"unit must be 'sentence', 'paragraph' or None, got {self.unit!r}")
        if isinstance(self.neighbours, bool) or not isinstance(self.neighbours, numbers.Integral):
            raise TypeError(f"neighbours must be an int, got {type(self.neighbours).__name__}")
        if self.neighbours < 0:
            raise ValueError(f"neighbours must be >= 0, got {self.neighbours}")
        if not isinstance(self.marker, str):
            raise TypeError(f"marker must be a str, got {type(self.marker).__name__}")
        share = self.entity_share
        if isinstance(share, bool) or not isinstance(share, numbers.Real):
            raise TypeError(f"entity_share must be a number in [0, 1], got {type(share).__name__}")
        if not 0.0 <= float(share) <= 1.0:
            raise ValueError(f"entity_share must be in [0, 1] (a share of the budget), got {share}")
        tok = self.reader_tokenizer
        if tok is not None and not isinstance(tok, str) and not callable(tok):
            raise TypeError(
                "reader_tokenizer must be None (the scoring model's tokenizer), a tokenizer name or local folder, "
                f"or a Hugging Face tokenizer object; got {type(tok).__name__}"
            )


def check_budget(budget_tokens: Any, name: str = "budget_tokens") -> int:
    """A token budget must be a positive int (bool and float are refused); returns it as an int."""
    if isinstance(budget_tokens, bool) or not isinstance(budget_tokens, numbers.Integral):
        raise TypeError(f"{name} must be an int (a number of reader tokens), got {type(budget_tokens).__name__}")
    if budget_tokens <= 0:
        raise ValueError(f"{name} must be positive, got {budget_tokens}; to drop a document, leave it out instead")
    return int(budget_tokens)


class TokenCounter:
    """Counts tokens the way the reader will: its tokenizer, no special tokens (the reader's prompt adds those)."""

    def __init__(self, tokenizer: Any) -> None:
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be callable (a Hugging Face tokenizer), got {type(tokenizer).__name__}")
        self.tokenizer = tokenizer

    def count(self, text: str) -> int:
        """Number of tokens of `text`."""
        if not text:
            return 0
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """Token counts of several texts in one batched call."""
        if not texts:
            return []
        ids = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return [len(x) if t else 0 for x, t in zip(ids, texts, strict=True)]


@functools.lru_cache(maxsize=8)
def load_reader_tokenizer(name: str) -> Any:
    """A reader's tokenizer by hub id or local folder (`AutoTokenizer.from_pretrained`; offline hubs need it cached)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"cannot load reader tokenizer {name!r}: {exc}. Give a local folder, a hub id in the local Hugging Face "
            "cache, a tokenizer object, or None for the scoring model's tokenizer."
        ) from exc


def reader_counter(retriever: AttentionRetriever, reader_tokenizer: Any = None) -> TokenCounter:
    """The counter for `reader_tokenizer` (None = the scoring model's tokenizer, a str = a name to load)."""
    if reader_tokenizer is None:
        return TokenCounter(retriever.model.tokenizer)
    if isinstance(reader_tokenizer, str):
        return TokenCounter(load_reader_tokenizer(reader_tokenizer))
    return TokenCounter(reader_tokenizer)


# ---------------------------------------------------------------------------------------------------------------
# The retriever-facing entry point

_derived: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_derived_lock = threading.Lock()


def scoring_retriever(retriever: AttentionRetriever, unit: Granularity | None) -> AttentionRetriever:
    """`retriever` itself, or (once per retriever and unit) a copy whose units are `unit`, sharing its caches."""
    if unit is None or retriever.config.units.granularity == unit:
        return retriever
    with _derived_lock:
        per = _derived.setdefault(retriever, {})
        other = per.get(unit)
        if other is None:
            config = retriever.config
            config = config.model_copy(update={"units": config.units.model_copy(update={"granularity": unit})})
            other = type(retriever)(config, trust_remote_code=getattr(retriever, "trust_remote_code", False))
            if hasattr(other, "share_caches"):
                other.share_caches(retriever)  # the prefilled document does not depend on the unit
            per[unit] = other
        return other


def prune(
    retriever: AttentionRetriever,
    query: str,
    documents: Sequence[str | Document],
    budget_tokens: int,
    options: PruneOptions | None = None,
    **given: Any,
) -> list[PrunedDocument]:
    """Prune each of `documents` to `budget_tokens` reader tokens for `query` (one result per document, in order).

    How to prune is `options`, or its fields given as keywords (`unit=`, `neighbours=`, `marker=`, `entity_share=`,
    `reader_tokenizer=`). Each document is scored on its own (`score_units`); see the module docstring.
    """
    check_query(query)
    budget = check_budget(budget_tokens)
    if options is None:
        unknown = set(given) - {f.name for f in dataclasses.fields(PruneOptions)}
        if unknown:
            raise TypeError(f"unknown pruning option(s) {sorted(unknown)}; see shared_core.pruning.PruneOptions")
        options = PruneOptions(**given)
    elif given:
        raise TypeError("give pruning options either as `options=PruneOptions(...)` or as keywords, not both")
    elif not isinstance(options, PruneOptions):
        raise TypeError(f"options must be a PruneOptions, got {type(options).__name__}")
    docs = coerce_documents(documents, allow_blank=True)
    scorer = scoring_retriever(retriever, options.unit)
    counter = reader_counter(retriever, options.reader_tokenizer)
    granularity = scorer.config.units.granularity
    out = []
    for index, doc in enumerate(docs):
        doc_id = doc.id if doc.id is not None else str(index)
        early = _trivial(doc.text, budget, counter, doc_id, index)
        if early is not None:
            out.append(early)
            continue
        units = scorer.units(doc)
        hits = scorer.score_units(query, doc)
        out.append(
            prune_hits(
                doc.text,
                units,
                hits,
                budget,
                counter,
                neighbours=options.neighbours,
                marker=options.marker,
                entity_share=options.entity_share,
                granularity=granularity,
                document_id=doc_id,
                document_index=index,
            )
        )
    return out


def _trivial(text: str, budget: int, counter: TokenCounter, doc_id: str | None, index: int) -> PrunedDocument | None:
    """The result when no choice is needed: a blank document (no units) or one that fits the budget whole."""
    base: dict[str, Any] = {
        "budget_tokens": budget,
        "document_id": doc_id,
        "document_index": index,
        "original_length": len(text),
    }
    if not text.strip():
        return PrunedDocument(
            text="",
            spans=(),
            tokens_kept=0,
            tokens_original=counter.count(text),
            status="no_units",
            note="the document is blank: it has no units to keep",
            **base,
        )
    total = counter.count(text)
    if total <= budget:
        span = KeptSpan(0, len(text), text, "whole")
        return PrunedDocument(
            text=text,
            spans=(span,),
            tokens_kept=total,
            tokens_original=total,
            status="whole",
            pieces=((0, len(text)),),
            **base,
        )
    return None


# ---------------------------------------------------------------------------------------------------------------
# Selection on scored units (also used by the benchmark's baselines)


def prune_hits(
    text: str,
    units: Sequence[Unit],
    hits: Sequence[Hit],
    budget_tokens: int,
    counter: TokenCounter,
    **kwargs: Any,
) -> PrunedDocument:
    """`prune_scores` with the retriever's hits: direct order by fused score, entity background from `reasons`."""
    if len(hits) != len(units) or any((h.start, h.end) != (u.start, u.end) for h, u in zip(hits, units, strict=True)):
        raise ValueError("hits must be the units of the document, in document order (what score_units returns)")
    scores = [float(h.scores.get("fused", h.score)) for h in hits]
    entity_units = sorted(
        (k for k, h in enumerate(hits) if any(r.startswith("entity:") for r in h.reasons)),
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
    early = _trivial(text, budget, counter, document_id, document_index)
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
    ends = [m.end() for m in _WORD.finditer(unit.text)]
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
