"""What pruning takes and returns: its options, kept spans, the pruned document, token budgets and the reader's
token counter (shared by `pruning`, its selection and the adapters)."""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

DEFAULT_MARKER = " … "
DEFAULT_ENTITY_SHARE = 0.25

Granularity = Literal["sentence", "paragraph"]
Status = Literal["pruned", "whole", "truncated", "no_units", "nothing_fits"]
Reason = Literal["direct", "neighbour", "entity", "whole"]
WORD = re.compile(r"\S+")

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
        """Plain-JSON form without the text (adapters store it in metadata, beside the text)."""
        return {name: value for name, value in asdict(self).items() if name != "text"}


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

    def meta(self) -> dict[str, Any]:
        """What both adapters store under `attnret_pruning` in a pruned item's metadata (plain JSON)."""
        return {
            "spans": [s.to_dict() for s in self.spans],
            "original_length": self.original_length,
            "tokens_kept": self.tokens_kept,
            "tokens_original": self.tokens_original,
            "status": self.status,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (the benchmark reads it)."""
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


def trivial_result(
    text: str, budget: int, counter: TokenCounter, doc_id: str | None, index: int
) -> PrunedDocument | None:
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
