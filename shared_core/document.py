"""Documents, units and hits: the values that cross the core's public API."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_ID_PREFIX = "attnret-"
"""Prefix of the id a document given without one gets (`default_id`)."""


def default_id(text: str) -> str:
    """The id of a document given without one (a plain str, or `id=None`): `attnret-` and the first 12 hex digits
    of its text's SHA-256. The same text always gets the same id, in any call or position, and it cannot collide
    with a caller's ids such as "0" or "1" when results are merged."""
    return DEFAULT_ID_PREFIX + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


@dataclass(frozen=True)
class Document:
    """A text to search, with a caller-chosen id and free-form metadata (never mutated)."""

    text: str
    id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        """Stable hash of the text, used to key cached model state."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Unit:
    """A retrievable span of a document (sentence or paragraph), as character offsets."""

    index: int
    start: int
    end: int
    text: str
    paragraph: int = 0


@dataclass
class Hit:
    """One retrieved unit: where it is, how it scored, and why it was retrieved."""

    document_id: str
    document_index: int
    """Position of the document in the call's input."""
    start: int
    end: int
    """Char offsets of the unit in its document: ``document.text[start:end] == text``."""
    text: str
    score: float
    """In [0, 1]. Candidate scoring: the calibrated probability that the candidate is relevant. Units of long
    documents: the fused score relative to the other units (README, "Scores and thresholds")."""
    scores: dict[str, float] = field(default_factory=dict)
    """Per-view scores (attention, dense, lexical, entities, fused; candidates also `<view>_raw` values)."""
    reasons: list[str] = field(default_factory=list)
    """Why the unit was retrieved, in words (the views that ranked it high, the entities it shares)."""
    unit_index: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, for the CLI and adapters (copies: changing it leaves the hit alone)."""
        return asdict(self)


META_PREFIX = "attnret_"
"""Prefix of every metadata key the adapters add; a caller's own keys are never overwritten."""
SOURCE_ID_KEY = "attnret_source_id"
START_KEY = "attnret_start"
END_KEY = "attnret_end"
REASONS_KEY = "attnret_reasons"
SCORES_KEY = "attnret_scores"
PRUNING_KEY = "attnret_pruning"
UNIT_META_KEYS = (SOURCE_ID_KEY, START_KEY, END_KEY, REASONS_KEY, SCORES_KEY)
"""The keys a unit returned by an adapter (sentence/paragraph granularity) adds to its source's metadata."""


def unit_meta(hit: Hit, source_id: str, start: int, end: int) -> dict[str, Any]:
    """The `attnret_` metadata of a unit cut from the item `source_id`: `start`/`end` are its char offsets in that
    item's text, so `text[start:end]` is the unit; the reasons and per-view scores are the hit's (plain JSON)."""
    return {
        SOURCE_ID_KEY: source_id,
        START_KEY: start,
        END_KEY: end,
        REASONS_KEY: list(hit.reasons),
        SCORES_KEY: {name: float(value) for name, value in hit.scores.items()},
    }
