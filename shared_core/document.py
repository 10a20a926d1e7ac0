"""Documents, units and hits: the values that cross the core's public API."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


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
    start: int
    end: int
    text: str
    score: float
    scores: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    unit_index: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, for the CLI and adapters."""
        return {
            "document_id": self.document_id,
            "document_index": self.document_index,
            "unit_index": self.unit_index,
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "score": self.score,
            "scores": dict(self.scores),
            "reasons": list(self.reasons),
        }
