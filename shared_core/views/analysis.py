"""What is computed once per document text, whatever the query: its units, its entity index and every view's
prepared state. One spaCy parse serves both the sentence units and the entities, and a text that extends a recent
one (a conversation grown by a turn) reuses the units, parse and view states of its unchanged paragraphs."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared_core.config import RetrieverConfig
from shared_core.document import Document, Unit
from shared_core.lru import LRUCache
from shared_core.text.nlp import RULE_BASED, load_pipeline, parse
from shared_core.text.segmentation import paragraph_spans, segment, sentence_units
from shared_core.views.base import View
from shared_core.views.entities import EntityIndex, load_nlp

_RECENT = 4
"""Recent analyses kept with their text (and parse), so a document that extends one reuses its paragraphs."""


@dataclass(frozen=True)
class Analysis:
    """A document's units, entity index (None when entities are off) and each view's per-document state."""

    units: tuple[Unit, ...]
    entities: EntityIndex | None
    states: dict[str, Any]


@dataclass(frozen=True)
class _Parse:
    """The shared spaCy parse of a text: its paragraphs' spans and one NER-tagged `Doc` per paragraph."""

    paragraphs: list[tuple[int, int]]
    docs: list[Any]


@dataclass(frozen=True)
class _Recent:
    text: str
    analysis: Analysis
    parse: _Parse | None


class Analyser:
    """Builds and caches the `Analysis` of each document text for one retriever config and its views."""

    def __init__(self, config: RetrieverConfig, views: Mapping[str, View]) -> None:
        self.config = config
        self.views = views
        self._cache: LRUCache[Analysis] = LRUCache(max(config.attention.kv_cache_size, 32))
        self._recent: list[_Recent] = []  # newest first
        self._lock = threading.Lock()
        cfg = config
        entity_key = (cfg.entities.spacy_model, cfg.entities.labels, cfg.entities.match_names)
        view_key = {"dense": cfg.dense.model_dump(), "lexical": cfg.lexical.model_dump(), **cfg.views}
        self._settings = (
            cfg.units.model_dump_json(),
            json.dumps(view_key, sort_keys=True, default=str),
            str(entity_key) if cfg.entities.enabled else "no entities",
        )

    def share(self, other: Analyser) -> None:
        """Use `other`'s cache (keys hold the settings, so different configs never collide)."""
        self._cache = other._cache

    def clear(self) -> None:
        """Forget every analysed document."""
        self._cache.clear()
        with self._lock:
            self._recent.clear()

    def analyse(self, doc: Document) -> Analysis:
        """The document's analysis, computed once per text and settings and cached."""
        return self._cache.get_or_create(self._key(doc), lambda: self._build(doc))

    def warm_up(self) -> None:
        """Load the spaCy pipelines the analysis uses (once per process), raising a missing one's error now."""
        cfg = self.config
        if cfg.units.granularity == "sentence":
            load_pipeline(cfg.units.spacy_model, "units.spacy_model")
        if cfg.entities.enabled:
            load_nlp(cfg.entities.spacy_model)

    def cached(self, doc: Document) -> bool:
        """Whether the document's analysis is cached (analysing it again costs nothing)."""
        return self._cache.get(self._key(doc)) is not None

    def _key(self, doc: Document) -> tuple[str, ...]:
        return (doc.content_hash, *self._settings)

    @property
    def _shares_parse(self) -> bool:
        """Whether one parse gives both units and entities (sentence units and NER from the same pipeline)."""
        u, e = self.config.units, self.config.entities
        return u.granularity == "sentence" and e.enabled and u.spacy_model == e.spacy_model != RULE_BASED

    def _build(self, doc: Document) -> Analysis:
        cfg = self.config
        old = self._grown_from(doc.text)
        kept_paragraphs, kept, start = _reuse_point(old, doc.text) if old is not None else (0, 0, 0)
        units = list(old.analysis.units[:kept]) if old is not None else []
        shared: _Parse | None = None
        if self._shares_parse:
            nlp = load_nlp(cfg.entities.spacy_model)
            reused = old.parse if old is not None else None  # None too when the old text had no shared parse
            new = [(s + start, e + start) for s, e in paragraph_spans(doc.text[start:])]
            docs = parse(nlp, (doc.text[s:e] for s, e in new), sentences=True, entities=True)
            fresh = sentence_units(doc.text, new, docs, cfg.units.min_chars, cfg.units.merge_headings)  # whole text
            if reused is not None:
                new, docs = reused.paragraphs[:kept_paragraphs] + new, reused.docs[:kept_paragraphs] + docs
            shared = _Parse(new, docs)
        else:
            u = cfg.units
            fresh = segment(doc.text[start:], u.granularity, u.spacy_model, u.min_chars, u.merge_headings)
            fresh = [Unit(x.index, x.start + start, x.end + start, x.text, x.paragraph) for x in fresh]
        units += [
            Unit(len(units) + i, x.start, x.end, x.text, x.paragraph + kept_paragraphs) for i, x in enumerate(fresh)
        ]
        states = {
            name: view.prepare(doc, units, (kept, old.analysis.states.get(name)) if old is not None else None)
            for name, view in self.views.items()
        }
        entities = None
        if cfg.entities.enabled:
            e = cfg.entities
            nlp = load_nlp(e.spacy_model)  # loaded once per process: a lookup here
            if shared is not None:
                offsets = [s for s, _ in shared.paragraphs]
                entities = EntityIndex.from_docs(units, nlp, offsets, shared.docs, e.labels, e.match_names)
            else:
                entities = EntityIndex.build(doc.text, units, nlp, labels=e.labels, match_names=e.match_names)
        analysis = Analysis(units=tuple(units), entities=entities, states=states)
        with self._lock:
            self._recent = [_Recent(doc.text, analysis, shared), *self._recent][:_RECENT]
        return analysis

    def _grown_from(self, text: str) -> _Recent | None:
        """A recent analysis of a text that `text` extends: the units of every paragraph before that text's last
        one are reused (the last paragraph may have grown)."""
        with self._lock:
            recent = list(self._recent)
        for entry in recent:
            if len(entry.text) < len(text) and text.startswith(entry.text) and entry.analysis.units:
                return entry
        return None


def _reuse_point(old: _Recent, text: str) -> tuple[int, int, int]:
    """Where the analysis of `text`, which extends `old.text`, starts over: the paragraphs and units kept and the
    char offset of the first paragraph analysed again. Every paragraph before the old text's last one is kept,
    and that last one too when `text` goes on after a paragraph break (else it may have grown)."""
    units = old.analysis.units
    paragraphs = units[-1].paragraph
    kept = sum(1 for u in units if u.paragraph < paragraphs)
    start = units[kept].start  # a paragraph starts at its first unit
    now = paragraph_spans(text[start:])
    if now and now[0] == paragraph_spans(old.text[start:])[0]:  # the last paragraph is complete: keep it too
        return paragraphs + 1, len(units), start + now[1][0] if len(now) > 1 else len(text)
    return paragraphs, kept, start
