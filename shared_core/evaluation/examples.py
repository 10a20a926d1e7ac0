"""Labelled examples: a query, its documents and exact gold evidence spans; the JSONL format; gold units
and the content-word overlap behind the no-overlap recall."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GoldSpan:
    """A gold evidence span: character offsets ``[start, end)`` into ``documents[document_index]``."""

    document_index: int
    start: int
    end: int


@dataclass(frozen=True)
class LabelledExample:
    """A query over one or more documents with its gold evidence spans (and answer, when known)."""

    id: str
    query: str
    documents: list[str]
    gold: list[GoldSpan]
    task: str
    answer: str | None = None
    document_id: str | None = None
    """The source document's id for real documents (several questions share one), else None."""

    def gold_texts(self) -> list[str]:
        """The text of each gold span, in ``gold`` order (handy for checks and reports)."""
        return [self.documents[g.document_index][g.start : g.end] for g in self.gold]


def word_count(text: str) -> int:
    """Whitespace word count, the unit of every ``target_words`` argument."""
    return len(text.split())


def group_by_document(examples: Sequence[LabelledExample]) -> list[list[LabelledExample]]:
    """Consecutive runs of examples over the same document (same id and text), as a user asks them."""
    groups: list[list[LabelledExample]] = []
    for ex in examples:
        if groups and groups[-1][0].document_id == ex.document_id and groups[-1][0].documents == ex.documents:
            groups[-1].append(ex)
        else:
            groups.append([ex])
    return groups


def load_jsonl(path: str | Path) -> list[LabelledExample]:
    """Load examples in the simple JSONL format, one object per line.

    ``{"id"?, "query", "documents": [str, ...] | "document": str, "gold": [{"document"?: 0, "start", "end"} |
    {"document"?: 0, "text"}], "answer"?, "task"?}``. Gold given by text must occur exactly once in the named document
    (or, without ``document``, across all documents); absent or ambiguous text is an error.
    """
    path = Path(path)
    examples: list[LabelledExample] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: invalid JSON ({exc})") from exc
            examples.append(_jsonl_example(obj, where, default_id=f"{path.stem}-{lineno}", default_task=path.stem))
    return examples


def _jsonl_example(obj: object, where: str, default_id: str, default_task: str) -> LabelledExample:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: each line must be a JSON object")
    query = obj.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"{where}: 'query' must be a non-empty string")
    if "documents" in obj:
        documents = obj["documents"]
    elif "document" in obj:
        documents = [obj["document"]]
    else:
        raise ValueError(f"{where}: needs 'documents' (list of strings) or 'document' (string)")
    if not isinstance(documents, list) or not documents or not all(isinstance(d, str) for d in documents):
        raise ValueError(f"{where}: 'documents' must be a non-empty list of strings")
    gold_raw = obj.get("gold")
    if not isinstance(gold_raw, list) or not gold_raw:
        raise ValueError(f"{where}: 'gold' must be a non-empty list")
    gold = [_jsonl_gold(g, documents, where) for g in gold_raw]
    answer = obj.get("answer")
    return LabelledExample(
        id=str(obj.get("id", default_id)),
        query=query,
        documents=list(documents),
        gold=gold,
        task=str(obj.get("task", default_task)),
        answer=None if answer is None else str(answer),
    )


def _jsonl_gold(g: object, documents: Sequence[str], where: str) -> GoldSpan:
    """One gold entry: explicit offsets are range-checked; text is located and must be unique."""
    if not isinstance(g, dict):
        raise ValueError(f"{where}: each gold entry must be an object")
    doc = g.get("document")
    if doc is not None and (not isinstance(doc, int) or not 0 <= doc < len(documents)):
        raise ValueError(f"{where}: gold document index {doc!r} out of range (0..{len(documents) - 1})")
    if "text" in g:
        text = g["text"]
        if not isinstance(text, str) or not text:
            raise ValueError(f"{where}: gold 'text' must be a non-empty string")
        candidates = [doc] if doc is not None else list(range(len(documents)))
        hits = [(d, s) for d in candidates for s in find_all(documents[d], text)]
        if not hits:
            raise ValueError(f"{where}: gold text not found in the document(s): {text[:80]!r}")
        if len(hits) > 1:
            raise ValueError(
                f"{where}: gold text is ambiguous ({len(hits)} occurrences), give 'start'/'end' instead: {text[:80]!r}"
            )
        d, s = hits[0]
        return GoldSpan(d, s, s + len(text))
    start, end = g.get("start"), g.get("end")
    if not isinstance(start, int) or not isinstance(end, int):
        raise ValueError(f"{where}: a gold entry needs integer 'start' and 'end', or 'text'")
    d = doc if doc is not None else 0
    if not 0 <= start < end <= len(documents[d]):
        raise ValueError(f"{where}: gold span [{start}, {end}) outside document {d} (length {len(documents[d])})")
    return GoldSpan(d, start, end)


def find_all(haystack: str, needle: str) -> list[int]:
    """Every start offset of ``needle`` in ``haystack`` (overlapping occurrences included)."""
    out: list[int] = []
    i = haystack.find(needle)
    while i >= 0:
        out.append(i)
        i = haystack.find(needle, i + 1)
    return out


def gold_units(units: Sequence[tuple[int, int]], gold: Sequence[GoldSpan], document_index: int) -> set[int]:
    """Indices of units ``(start, end)`` of one document that overlap any gold span of that document."""
    spans = [(g.start, g.end) for g in gold if g.document_index == document_index]
    return {i for i, (s, e) in enumerate(units) if any(s < ge and gs < e for gs, ge in spans)}


_STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between both
    but by can could did do does doing down during each few for from further had has have having he her here hers
    herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
    once only or other our ours ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours yourself yourselves also s t""".split()
)


def _stem(word: str) -> str:
    """A light plural/possessive stemmer, so 'films' and 'film' count as the same content word."""
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def content_words(text: str) -> set[str]:
    """Lower-cased, lightly stemmed words of ``text`` minus English stop words (for the no-overlap recall)."""
    return {_stem(w) for w in re.findall(r"[a-z0-9]+(?:'s)?", text.lower()) if w not in _STOPWORDS and len(w) > 1}


def shares_content_word(a: str, b: str) -> bool:
    """Whether two texts share a content word: gold sentences that do not are the lexical-gap cases."""
    return bool(content_words(a) & content_words(b))
