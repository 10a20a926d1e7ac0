"""Cut documents into units (sentences or paragraphs) with exact character offsets.

Paragraphs are separated by blank lines; sentences come from spaCy inside each paragraph, so a
sentence never crosses a paragraph boundary. Units never include surrounding whitespace.
"""

from __future__ import annotations

import functools
import logging
import operator
import re
import threading
from collections.abc import Sequence
from typing import Any

from .document import Unit
from .entities import SPACY_INSTALL, SpacyModelNotFoundError

RULE_BASED = "sentencizer"
"""`units.spacy_model` value that selects spaCy's rule-based sentencizer (no trained pipeline needed)."""

logger = logging.getLogger(__name__)

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_nlp_lock = threading.Lock()


def paragraph_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the non-blank paragraphs of `text`, stripped of surrounding whitespace."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for m in [*_PARAGRAPH_BREAK.finditer(text), None]:
        end = m.start() if m else len(text)
        span = _strip(text, pos, end)
        if span:
            spans.append(span)
        if m:
            pos = m.end()
    return spans


@functools.lru_cache(maxsize=4)
def sentence_pipeline(name: str) -> Any:
    """spaCy pipeline for sentence boundaries: an installed (parser-based) pipeline, or 'sentencizer' for the
    rule-based one; a missing pipeline is a `SpacyModelNotFoundError` naming the installed ones, never a fallback."""
    import spacy

    if name == RULE_BASED:
        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
    else:
        try:
            nlp = spacy.load(name, exclude=["ner", "lemmatizer", "attribute_ruler", "tagger"])
        except OSError as exc:
            raise SpacyModelNotFoundError(
                f"units.spacy_model: spaCy pipeline {name!r} is not installed (installed: "
                f"{', '.join(installed_spacy_models()) or 'none'}); install one with `{SPACY_INSTALL}`, "
                f"or set units.spacy_model to {RULE_BASED!r} for the rule-based splitter"
            ) from exc
    nlp.max_length = max(nlp.max_length, 10_000_000)
    return nlp


def installed_spacy_models() -> list[str]:
    """Names of the spaCy pipelines installed as packages (what `spacy.load` can find by name)."""
    import spacy.util

    return sorted(spacy.util.get_installed_models())


def segment(text: str, granularity: str, spacy_model: str, min_chars: int = 1) -> list[Unit]:
    """Units of `text` in document order; `text[u.start:u.end] == u.text` for every unit."""
    paragraphs = paragraph_spans(text)
    raw: list[tuple[int, int, int]] = []
    if granularity == "paragraph":
        raw = [(s, e, p) for p, (s, e) in enumerate(paragraphs)]
    else:
        nlp = sentence_pipeline(spacy_model)
        with _nlp_lock:  # spaCy pipelines are not documented as thread-safe
            docs = list(nlp.pipe(text[s:e] for s, e in paragraphs))
        for p, ((ps, _), doc) in enumerate(zip(paragraphs, docs, strict=True)):
            for sent in doc.sents:
                span = _strip(text, ps + sent.start_char, ps + sent.end_char)
                if span:
                    raw.append((*span, p))
    merged = _merge_short(raw, text, min_chars)
    return [Unit(index=i, start=s, end=e, text=text[s:e], paragraph=p) for i, (s, e, p) in enumerate(merged)]


def units_from_spans(text: str, spans: Sequence[tuple[int, int]]) -> list[Unit]:
    """Units for caller-given character spans (validated, kept in the given order; overlaps are allowed).

    Each span is a pair of ints (numpy ints too; bools and floats are refused) with 0 <= start < end <= len(text).
    """
    if isinstance(spans, str | bytes) or not isinstance(spans, Sequence):
        raise TypeError(f"spans must be a sequence of (start, end) pairs, got {type(spans).__name__}")
    if not spans:
        raise ValueError("spans is empty: give at least one (start, end) pair")
    units = []
    for i, span in enumerate(spans):
        start, end = _span_pair(span, i)
        if not (0 <= start < end <= len(text)):
            raise ValueError(
                f"span {i} ({start}, {end}) is empty or outside the document (need 0 <= start < end <= {len(text)})"
            )
        units.append(Unit(index=i, start=start, end=end, text=text[start:end], paragraph=0))
    return units


def _span_pair(span: Any, i: int) -> tuple[int, int]:
    """A (start, end) pair of plain ints, or a TypeError/ValueError naming span `i`."""
    if isinstance(span, str | bytes) or not isinstance(span, Sequence):
        raise TypeError(f"span {i} must be a (start, end) pair of ints, got {type(span).__name__}")
    if len(span) != 2:
        raise ValueError(f"span {i} must be a (start, end) pair, got {len(span)} values")
    out = []
    for name, value in zip(("start", "end"), span, strict=True):
        if isinstance(value, bool):
            raise TypeError(f"span {i} {name} must be an int, got bool")
        try:
            out.append(operator.index(value))
        except TypeError:
            raise TypeError(f"span {i} {name} must be an int, got {type(value).__name__} {value!r:.40}") from None
    return out[0], out[1]


def _strip(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def _merge_short(raw: list[tuple[int, int, int]], text: str, min_chars: int) -> list[tuple[int, int, int]]:
    """Merge units shorter than `min_chars` into the following unit of the same paragraph."""
    if min_chars <= 1:
        return raw
    out: list[tuple[int, int, int]] = []
    pending: tuple[int, int, int] | None = None
    for s, e, p in raw:
        if pending is not None and pending[2] == p:
            s = pending[0]
        elif pending is not None:
            out.append(pending)
        pending = None
        if e - s < min_chars:
            pending = (s, e, p)
        else:
            out.append((s, e, p))
    if pending is not None:
        out.append(pending)
    return out
