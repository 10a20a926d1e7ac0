"""Entity scope: spaCy NER links units that mention the same entity, so top entities pull in their other units."""

from __future__ import annotations

import logging
import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared_core.config.sections import EXCLUDED_LABELS, EntitiesConfig
from shared_core.document import Unit
from shared_core.text.nlp import DEFAULT_SPACY_MODEL, has_ner, load_pipeline, parse

logger = logging.getLogger(__name__)


PLACE_LABELS: frozenset[str] = frozenset({"GPE", "LOC", "FAC"})
"""A one-word mention with one of these labels is never taken as a short name of a person ("Washington")."""

_CHUNK_CHARS = 100_000


def load_nlp(name: str = DEFAULT_SPACY_MODEL) -> Any:
    """The spaCy pipeline for entities (loaded once per process); refused when it has no NER component."""
    nlp = load_pipeline(name, "entities.spacy_model")
    if not has_ner(nlp):
        raise ValueError(f"spaCy pipeline {name!r} has no NER component (pipes: {nlp.pipe_names})")
    return nlp


_POSSESSIVE = re.compile(r"(?:['’]s|(?<=s)['’])$")
_LEADING_THE = re.compile(r"^the\s+")
_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")


def normalise_entity(text: str) -> str:
    """Entity key: lower case, single spaces, no possessive 's, no leading 'the', no edge punctuation."""
    key = _EDGE_PUNCT.sub("", " ".join(text.split()).lower())
    key = _LEADING_THE.sub("", _POSSESSIVE.sub("", key))
    return _EDGE_PUNCT.sub("", key)


@dataclass(frozen=True)
class Mention:
    """One occurrence of an entity: its normalised key, the unit holding it and its document char offsets."""

    entity: str
    unit_index: int
    start: int
    end: int


@dataclass(frozen=True)
class _RawMention:
    key: str
    label: str
    text: str
    unit_index: int
    start: int
    end: int


class EntityIndex:
    """Entity mentions of one document mapped to its units (build once per document and cache it)."""

    def __init__(self, mentions: Iterable[Mention], names: dict[str, str], labels: dict[str, str]) -> None:
        self.mentions: list[Mention] = sorted(mentions, key=lambda m: (m.start, m.end))
        self.names = dict(names)
        self.labels = dict(labels)
        self._aliases: dict[str, str] = {}
        self._units_of: dict[str, list[int]] = {}
        self._entities_of: dict[int, list[str]] = {}
        self._mentions_of: dict[int, list[Mention]] = {}
        for mention in self.mentions:
            self._mentions_of.setdefault(mention.unit_index, []).append(mention)
            units = self._units_of.setdefault(mention.entity, [])
            if not units or units[-1] != mention.unit_index:
                units.append(mention.unit_index)
            entities = self._entities_of.setdefault(mention.unit_index, [])
            if mention.entity not in entities:
                entities.append(mention.entity)
        for units in self._units_of.values():
            units.sort()

    @classmethod
    def build(
        cls, text: str, units: Sequence[Unit], nlp: Any, labels: Sequence[str] | None = None, match_names: bool = True
    ) -> EntityIndex:
        """Run NER over the document (in unit-aligned chunks) and map each entity to the unit holding its start.

        With `match_names`, every exact occurrence of a name NER found somewhere is a mention too (spaCy's
        PhraseMatcher): a small NER model misses names it tagged elsewhere ("Odile Brannigan's group").
        """
        limit = min(_CHUNK_CHARS, int(getattr(nlp, "max_length", _CHUNK_CHARS)))
        spans = list(_chunks(text, units, limit))
        docs = parse(nlp, (text[a:b] for a, b in spans), sentences=False, entities=True)
        return cls.from_docs(units, nlp, [a for a, _ in spans], docs, labels, match_names)

    @classmethod
    def from_docs(
        cls,
        units: Sequence[Unit],
        nlp: Any,
        offsets: Sequence[int],
        docs: Sequence[Any],
        labels: Sequence[str] | None = None,
        match_names: bool = True,
    ) -> EntityIndex:
        """The index from NER-tagged spaCy `docs` of the document's text starting at `offsets` (e.g. the same
        parse that cut the sentences), each entity mapped to the unit holding its start."""
        allowed = {label.upper() for label in labels} if labels is not None else None
        starts = [unit.start for unit in units]
        raw: list[_RawMention] = []
        tagged = [
            [
                (ent, ent.label_)
                for ent in doc.ents
                if not ((ent.label_ not in allowed) if allowed is not None else (ent.label_ in EXCLUDED_LABELS))
            ]
            for doc in docs
        ]
        if match_names:
            tagged = _with_missed_names(nlp, list(docs), tagged)
        for offset, found in zip(offsets, tagged, strict=True):
            for span, label in found:
                start, end = offset + span.start_char, offset + span.end_char
                position = bisect_right(starts, start) - 1
                if position < 0 or start >= units[position].end:
                    continue  # entity in text that belongs to no unit
                key = normalise_entity(span.text)
                if key:
                    raw.append(_RawMention(key, label, span.text, position, start, end))
        return cls._from_raw(raw)

    @classmethod
    def _from_raw(cls, raw: list[_RawMention]) -> EntityIndex:
        """Resolve short names to full names, pick display names and labels, and build the index."""
        canonical = _resolve_aliases(raw)
        mentions: list[Mention] = []
        names: dict[str, str] = {}
        label_votes: dict[str, dict[str, int]] = {}
        for mention, key in zip(raw, canonical, strict=True):
            mentions.append(Mention(key, mention.unit_index, mention.start, mention.end))
            surface = _display(mention.text)
            if mention.key == key and len(surface) > len(names.get(key, "")):
                names[key] = surface
            votes = label_votes.setdefault(key, {})
            votes[mention.label] = votes.get(mention.label, 0) + 1
        for mention, key in zip(raw, canonical, strict=True):
            names.setdefault(key, _display(mention.text))
        labels = {key: max(votes, key=lambda label: votes[label]) for key, votes in label_votes.items()}
        index = cls(mentions, names, labels)
        index._aliases = {m.key: key for m, key in zip(raw, canonical, strict=True) if m.key != key}
        return index

    @property
    def entities(self) -> list[str]:
        """Entity keys in order of first mention."""
        return list(self._units_of)

    def resolve(self, entity: str) -> str:
        """Key for a name as a user writes it ("Sandra's" -> "sandra smith" when that alias was seen)."""
        if entity in self._units_of:
            return entity
        key = normalise_entity(entity)
        return self._aliases.get(key, key)

    def units_of(self, entity: str) -> list[int]:
        """Sorted indices of the units mentioning an entity (key or any spelling of it); [] if unknown."""
        return list(self._units_of.get(self.resolve(entity), []))

    def entities_of(self, unit_index: int) -> list[str]:
        """Keys of the entities mentioned in a unit, in order of appearance."""
        return list(self._entities_of.get(unit_index, []))

    def mentions_in(self, unit_index: int) -> list[Mention]:
        """Mentions inside a unit, in text order."""
        return list(self._mentions_of.get(unit_index, []))

    def display_name(self, entity: str) -> str:
        """Readable name of an entity (its longest surface form), for reasons such as `entity:Sandra Smith`."""
        key = self.resolve(entity)
        return self.names.get(key, entity)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, so the index can be cached next to a document."""
        return {
            "mentions": [[m.entity, m.unit_index, m.start, m.end] for m in self.mentions],
            "names": dict(self.names),
            "labels": dict(self.labels),
            "aliases": dict(self._aliases),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EntityIndex:
        """Inverse of `to_dict`."""
        mentions = [Mention(str(e), int(u), int(s), int(t)) for e, u, s, t in data["mentions"]]
        index = cls(mentions, data.get("names", {}), data.get("labels", {}))
        index._aliases = dict(data.get("aliases", {}))
        return index

    def __len__(self) -> int:
        return len(self.mentions)

    def __repr__(self) -> str:
        return f"EntityIndex({len(self._units_of)} entities, {len(self.mentions)} mentions)"


def _display(surface: str) -> str:
    """Readable form of a mention: single spaces, no possessive 's, no leading 'The'."""
    text = _POSSESSIVE.sub("", " ".join(surface.split()))
    return re.sub(r"^[Tt]he\s+", "", text) or text


def _chunks(text: str, units: Sequence[Unit], limit: int) -> Iterable[tuple[int, int]]:
    """Char spans covering all units, cut only at unit starts, each at most `limit` chars (or one longer unit)."""
    if not units:
        return
    chunk_start = units[0].start
    chunk_end = units[0].end
    for unit in units[1:]:
        if unit.end - chunk_start > limit:
            yield chunk_start, chunk_end
            chunk_start = unit.start
        chunk_end = max(chunk_end, unit.end)
    yield chunk_start, min(chunk_end, len(text))


def _resolve_aliases(raw: Sequence[_RawMention]) -> list[str]:
    """Map one-word names to a multi-word PERSON name containing them as first or last word.

    The most recent such full name before the mention wins; with none before, the document's only candidate does.
    """
    full_names: dict[str, list[tuple[int, str]]] = {}  # word -> [(mention position, full key)]
    for position, mention in enumerate(raw):
        words = mention.key.split()
        if mention.label == "PERSON" and len(words) > 1:
            for word in {words[0], words[-1]}:
                full_names.setdefault(word, []).append((position, mention.key))
    resolved: list[str] = []
    for position, mention in enumerate(raw):
        candidates = full_names.get(mention.key) if " " not in mention.key else None
        if not candidates or mention.label in PLACE_LABELS:
            resolved.append(mention.key)
            continue
        before = [key for pos, key in candidates if pos < position]
        distinct = {key for _pos, key in candidates}
        if before:
            resolved.append(before[-1])
        elif len(distinct) == 1:
            resolved.append(next(iter(distinct)))
        else:
            resolved.append(mention.key)
    return resolved


@dataclass(frozen=True)
class Expansion:
    """A unit pulled in because it mentions (or follows a mention of) a top entity, with that entity's score."""

    unit_index: int
    entity: str
    entity_score: float


def _with_missed_names(nlp: Any, docs: list[Any], tagged: list[list[tuple[Any, str]]]) -> list[list[tuple[Any, str]]]:
    """Add the exact occurrences of names NER tagged somewhere; overlapping spans keep the longest."""
    from spacy.matcher import PhraseMatcher
    from spacy.util import filter_spans

    label_of: dict[str, str] = {}
    for found in tagged:
        for span, label in found:
            label_of.setdefault(span.text, label)
    if not label_of:
        return tagged
    matcher = PhraseMatcher(nlp.vocab, attr="ORTH")
    matcher.add("NAME", [nlp.make_doc(name) for name in label_of])
    out = []
    for doc, found in zip(docs, tagged, strict=True):
        labels = {(span.start, span.end): label for span, label in found}
        matched = [doc[a:b] for _, a, b in matcher(doc)]
        kept = filter_spans([span for span, _ in found] + matched)
        out.append([(span, labels.get((span.start, span.end), label_of[span.text])) for span in kept])
    return out


def entity_scores(index: EntityIndex, fused: np.ndarray) -> dict[str, float]:
    """Each entity's score: the best fused score among the units that mention it."""
    return {entity: float(np.max(fused[index.units_of(entity)])) for entity in index.entities}


def _in_query(entity: str, query: str | None) -> bool:
    """Every word of the (normalised) entity occurs in the query."""
    if not query:
        return False
    words = set(re.findall(r"\w+", query.lower()))
    return all(w in words for w in re.findall(r"\w+", entity))


def common_word(entity: str, units: Sequence[Unit]) -> bool:
    """The entity key (lower case) also occurs, in lower case, as a plain word sequence of the units' text: NER
    mistook a common word for a name there ('Nice.' and 'that's nice'), so the entity bridges nothing."""
    words = re.findall(r"\w+", entity)
    if not words or not any(c.isalpha() for c in entity):
        return False
    pattern = re.compile(r"(?<!\w)" + r"\W+".join(map(re.escape, words)) + r"(?!\w)")
    return any(pattern.search(unit.text) for unit in units)


def expand(
    index: EntityIndex,
    fused: np.ndarray,
    units: Sequence[Unit],
    config: EntitiesConfig,
    exclude: set[int],
    query: str | None = None,
) -> list[Expansion]:
    """Units the top entities pull in, best entity first, then in `config.order`, skipping `exclude`, capped.

    Unit indices are positions in `units` (the same positions `EntityIndex.build` used). Entities are ranked by
    their score, times their specificity when `config.specificity`; `Expansion.entity_score` stays the plain score.
    """
    scores = np.asarray(fused, dtype=np.float64)
    if scores.ndim != 1 or scores.size != len(units):
        raise ValueError(f"fused scores must be 1-D with one score per unit ({len(units)}), got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("fused scores contain NaN or infinite values")
    if index.mentions and max(m.unit_index for m in index.mentions) >= len(units):
        raise ValueError("the entity index refers to units beyond the given list: was it built for another document?")
    if not config.enabled or config.top_entities == 0 or config.max_expansions == 0 or not index.entities:
        return []
    by_entity = entity_scores(index, scores)
    if config.skip_query_entities:
        by_entity = {e: v for e, v in by_entity.items() if not _in_query(e, query)}
    first_unit = {entity: index.units_of(entity)[0] for entity in by_entity}
    n_units = max(len(units), 2)
    rank_value = {
        e: v * (np.log(n_units / len(set(index.units_of(e)))) if config.specificity else 1.0)
        for e, v in by_entity.items()
    }
    ranked = sorted(by_entity, key=lambda e: (-rank_value[e], first_unit[e]))
    top: list[str] = []
    for entity in (e for e in ranked if by_entity[e] >= config.min_entity_score):
        if len(top) == config.top_entities:
            break
        if not (config.skip_common_words and common_word(entity, units)):  # checked lazily: a regex over the text
            top.append(entity)
    paragraphs: dict[int, list[int]] = {}
    if config.expand == "paragraph":
        for position, unit in enumerate(units):
            paragraphs.setdefault(unit.paragraph, []).append(position)
    taken: set[int] = set(exclude)
    result: list[Expansion] = []
    for entity in top:
        mention_units = index.units_of(entity)
        wanted: set[int] = set(mention_units)
        if config.expand == "paragraph":
            for position in mention_units:
                wanted.update(paragraphs[units[position].paragraph])
        if config.neighbours:
            for position in mention_units:
                after = position + 1
                if after < len(units) and not index.entities_of(after):
                    wanted.add(after)
        if config.order == "proximity":
            anchor = max(mention_units, key=lambda u: (scores[u], -u))
            ordered = sorted(wanted, key=lambda u: (abs(u - anchor), u))
        else:
            ordered = sorted(wanted)
        for position in ordered:
            if position in taken:
                continue
            taken.add(position)
            result.append(Expansion(position, entity, by_entity[entity]))
            if len(result) >= config.max_expansions:
                return result
    return result
