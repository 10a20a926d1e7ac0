"""Cut documents into units (sentences or paragraphs) with exact character offsets.

Paragraphs are separated by blank lines; sentences come from spaCy inside each paragraph, so a
sentence never crosses a paragraph boundary. Units never include surrounding whitespace.
"""

from __future__ import annotations

import logging
import operator
import re
from collections.abc import Sequence
from typing import Any

from shared_core.document import Unit
from shared_core.text.nlp import load_pipeline, parse

logger = logging.getLogger(__name__)

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_UNSPACED = "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff"
_WORDS = re.compile(rf"[{_UNSPACED}]|(?:(?![{_UNSPACED}])[^\W\d_])+")
"""A word: a run of letters, or one character of a script written without spaces (CJK, Thai...)."""
_MINOR_WORDS = frozenset("a an and as at by for from in of on or the to vs with".split())
HEADING_MAX_WORDS = 2
"""A unit of at most this many words is a heading or fragment ("Safety.", "METHODS:", "[1] .", "Figure 2 .")."""
TITLE_MAX_WORDS = 5
"""A unit of at most this many words ending in a colon, or in Title Case without a sentence end, is a heading."""


def is_heading(text: str) -> bool:
    """Whether a unit is a heading or a fragment rather than a statement: at most `HEADING_MAX_WORDS` words of
    letters ("Safety.", "Study design", "[1] ."), or at most `TITLE_MAX_WORDS` ending in a colon or in Title Case
    without a sentence end ("Results and discussion:", "Materials and Methods")."""
    words = _WORDS.findall(text)
    if len(words) <= HEADING_MAX_WORDS:
        return True
    if len(words) > TITLE_MAX_WORDS:
        return False
    end = text.rstrip()[-1:]
    if end == ":":
        return True
    return end not in ".?!;,\"'”’)]" and all(w[0].isupper() or w.lower() in _MINOR_WORDS for w in words)


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


def segment(
    text: str, granularity: str, spacy_model: str, min_chars: int = 1, merge_headings: bool = False
) -> list[Unit]:
    """Units of `text` in document order; `text[u.start:u.end] == u.text` for every unit."""
    paragraphs = paragraph_spans(text)
    if granularity == "paragraph":
        return _units(text, [(s, e, p) for p, (s, e) in enumerate(paragraphs)], min_chars)
    nlp = load_pipeline(spacy_model, "units.spacy_model")
    docs = parse(nlp, (text[s:e] for s, e in paragraphs), sentences=True, entities=False)
    return sentence_units(text, paragraphs, docs, min_chars, merge_headings)


def sentence_units(
    text: str,
    paragraphs: Sequence[tuple[int, int]],
    docs: Sequence[Any],
    min_chars: int = 1,
    merge_headings: bool = False,
) -> list[Unit]:
    """Sentence units from the spaCy `docs` of `paragraphs` (one parse can serve the entities too); with
    `merge_headings`, a heading sentence (`is_heading`) joins the next sentence of its paragraph (the one before it
    at the paragraph's end)."""
    raw: list[tuple[int, int, int]] = []
    for p, ((ps, _), doc) in enumerate(zip(paragraphs, docs, strict=True)):
        for sent in doc.sents:
            span = _strip(text, ps + sent.start_char, ps + sent.end_char)
            if span:
                raw.append((*span, p))
    if merge_headings:
        raw = _merge_headings(raw, text)
    return _units(text, raw, min_chars)


def _units(text: str, raw: list[tuple[int, int, int]], min_chars: int) -> list[Unit]:
    merged = _merge_short(raw, text, min_chars)
    return [Unit(index=i, start=s, end=e, text=text[s:e], paragraph=p) for i, (s, e, p) in enumerate(merged)]


def _merge_headings(raw: list[tuple[int, int, int]], text: str) -> list[tuple[int, int, int]]:
    """Join each heading unit to the next unit of its paragraph, or to the one before it when it ends the paragraph;
    a paragraph of headings only stays one unit (never across a paragraph break: nodes are joined at those)."""
    out: list[tuple[int, int, int]] = []
    pending: tuple[int, int, int] | None = None  # headings waiting for the next unit of their paragraph
    for s, e, p in raw:
        if pending is not None and pending[2] != p:
            _close(out, pending)
            pending = None
        start = s if pending is None else pending[0]
        if is_heading(text[s:e]):
            pending = (start, e, p)
        else:
            out.append((start, e, p))
            pending = None
    if pending is not None:
        _close(out, pending)
    return out


def _close(out: list[tuple[int, int, int]], pending: tuple[int, int, int]) -> None:
    """Headings that end their paragraph join the unit before them in that paragraph (else they stand alone)."""
    if out and out[-1][2] == pending[2]:
        out[-1] = (out[-1][0], pending[1], pending[2])
    else:
        out.append(pending)


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
