"""Real documents kept whole: COVID-QA papers (paragraphs) and QMSum meeting transcripts (one turn a
paragraph), split by document id into held-in (tuning) and held-out (tables)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, TypedDict, Unpack

import numpy as np

from shared_core.evaluation.data import REAL_FILES, resolve_task_path
from shared_core.evaluation.examples import GoldSpan, LabelledExample, find_all, word_count
from shared_core.text.segmentation import paragraph_spans

logger = logging.getLogger(__name__)

Split = Literal["held-in", "held-out", "all"]
_SPLITS = ("held-in", "held-out", "all")


def real_split(ids: Sequence[str], split: Split) -> list[str]:
    """The document ids of ``split``: ids sorted (numerically when all are digits), the first third held in.

    Held-in documents are for tuning (fusion weights, head detection); tables are measured on the held-out rest,
    so no choice ever sees the documents it is judged on.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    key = (lambda i: (int(i), i)) if all(str(i).isdigit() for i in ids) else (lambda i: (0, str(i)))
    ordered = sorted(dict.fromkeys(ids), key=key)
    cut = len(ordered) // 3
    if split == "held-in":
        return ordered[:cut]
    return ordered[cut:] if split == "held-out" else ordered


class RealOptions(TypedDict, total=False):
    """Which questions of a real set: documents of ``split`` (default held-out) in order, the first ``n_documents``
    (None: all), ``per_document`` questions each (None: all; else a sample seeded by ``seed``), each document cut
    after the block reaching ``max_words`` words (None: whole)."""

    split: Split
    n_documents: int | None
    per_document: int | None
    seed: int
    max_words: int | None


def _selection(options: RealOptions) -> tuple[Split, int | None, int | None, int, int | None]:
    """The options with their defaults, each count checked to be a positive int or None."""
    unknown = set(options) - set(RealOptions.__annotations__)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; known: {list(RealOptions.__annotations__)}")
    n_documents, per_document = options.get("n_documents"), options.get("per_document")
    max_words = options.get("max_words")
    for name, value in (("n_documents", n_documents), ("per_document", per_document), ("max_words", max_words)):
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return options.get("split", "held-out"), n_documents, per_document, options.get("seed", 0), max_words


def _pick_questions(count: int, per_document: int | None, seed: int, position: int) -> list[int]:
    """Indices of the questions kept for one document: all, or a seeded sample of ``per_document`` in file order."""
    if per_document is None or per_document >= count:
        return list(range(count))
    chosen = np.random.default_rng([seed, position]).choice(count, size=per_document, replace=False)
    return sorted(int(i) for i in chosen)


def _cut_blocks(blocks: Sequence[tuple[int, int]], text: str, max_words: int | None) -> int:
    """Number of leading blocks (paragraphs, turns) kept so the text reaches ``max_words`` words (all if None)."""
    if max_words is None:
        return len(blocks)
    words = 0
    for i, (s, e) in enumerate(blocks):
        words += word_count(text[s:e])
        if words >= max_words:
            return i + 1
    return len(blocks)


def covidqa_examples(path: str | Path, **options: Unpack[RealOptions]) -> list[LabelledExample]:
    """COVID-QA questions, grouped by paper (``document_id``); each paper kept whole as one document.

    The paper's ``context`` is the document as given (paragraphs separated by blank lines). Gold = the answer span
    ``answer_start .. answer_start + len(text)`` of each answer (checked against the text; an answer whose offset is
    off is located by its text nearest to the offset, one not found is dropped with a warning). Papers of ``split``
    in id order, the first ``n_documents``; per paper all questions or a seeded sample of ``per_document``.
    ``max_words`` cuts each paper after the paragraph that reaches it (smoke runs) and keeps the questions whose
    answers lie inside.
    """
    split, n_documents, per_document, seed, max_words = _selection(options)
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: expected the SQuAD layout {{'data': [{{'paragraphs': [...]}}]}}")
    papers = {str(p["document_id"]): p for article in data["data"] for p in article["paragraphs"]}
    wanted = real_split(list(papers), split)[:n_documents]
    examples: list[LabelledExample] = []
    for position, doc_id in enumerate(wanted):
        paper = papers[doc_id]
        text = paper["context"]
        blocks = paragraph_spans(text)
        kept = _cut_blocks(blocks, text, max_words)
        limit = blocks[kept - 1][1] if kept else 0
        if kept < len(blocks):
            text = text[:limit]
        candidates = []
        for q in paper["qas"]:
            gold = [g for g in (_covid_span(text, a, doc_id, q.get("id")) for a in q.get("answers", [])) if g]
            if gold and all(g.end <= limit for g in gold):
                candidates.append((q, gold))
        for qi in _pick_questions(len(candidates), per_document, seed, position):
            q, gold = candidates[qi]
            examples.append(
                LabelledExample(
                    id=f"covidqa-{doc_id}-{q.get('id', qi)}",
                    query=str(q["question"]).strip(),
                    documents=[text],
                    gold=sorted(set(gold), key=lambda g: (g.start, g.end)),
                    task="covidqa",
                    answer=str(q["answers"][0]["text"]),
                    document_id=doc_id,
                )
            )
    return examples


def _covid_span(text: str, answer: dict, doc_id: str, qid: object) -> GoldSpan | None:
    """The answer's exact span in ``text``: its offset when the text matches there, else the nearest occurrence."""
    answer_text = str(answer.get("text", ""))
    given = answer.get("answer_start")
    if not answer_text.strip() or not isinstance(given, int):
        return None
    start: int = given
    if text[start : start + len(answer_text)] != answer_text:
        hits = find_all(text, answer_text)
        if not hits:
            if start + len(answer_text) <= len(text):  # only warn for answers inside the (possibly cut) text
                logger.warning("COVID-QA paper %s question %s: answer text not found; dropped", doc_id, qid)
            return None
        start = min(hits, key=lambda h: abs(h - given))
    s, e = start, start + len(answer_text)
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return GoldSpan(0, s, e)


def qmsum_examples(path: str | Path, **options: Unpack[RealOptions]) -> list[LabelledExample]:
    """QMSum specific queries, grouped by meeting; each meeting one document of ``Speaker: content`` turns.

    Turns are joined by a blank line (a turn's own whitespace collapsed to single spaces), so paragraph units are
    turns and sentence units never cross a turn. Gold = the whole turns of every ``relevant_text_span`` (turn
    numbers, both ends included), one span per turn. Meetings are numbered by file line (``qmsum-000`` ...);
    ``split`` and ``n_documents`` pick them in that order. ``max_words`` cuts each meeting after the turn that
    reaches it (smoke runs, to stay within a small model's window): gold is then clipped to the kept turns and
    queries with no gold turn left are dropped.
    """
    split, n_documents, per_document, seed, max_words = _selection(options)
    meetings: dict[str, dict] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh):
            if raw.strip():
                meetings[f"qmsum-{lineno:03d}"] = json.loads(raw)
    examples: list[LabelledExample] = []
    for position, doc_id in enumerate(real_split(list(meetings), split)[:n_documents]):
        meeting = meetings[doc_id]
        turns = meeting.get("meeting_transcripts")
        if not isinstance(turns, list) or not turns:
            raise ValueError(f"{path}: meeting {doc_id} has no 'meeting_transcripts' turns")
        text, spans = _render_turns(turns)
        kept = _cut_blocks(spans, text, max_words)
        if kept < len(spans):
            text, spans = text[: spans[kept - 1][1]], spans[:kept]
        candidates = []
        for qi, q in enumerate(meeting.get("specific_query_list", [])):
            turn_ids = _qmsum_turns(q.get("relevant_text_span", []), len(turns), doc_id, qi)
            gold = [GoldSpan(0, *spans[t]) for t in sorted(turn_ids) if t < kept]
            if gold:
                candidates.append((qi, q, gold))
        for ci in _pick_questions(len(candidates), per_document, seed, position):
            qi, q, gold = candidates[ci]
            examples.append(
                LabelledExample(
                    id=f"{doc_id}-q{qi}",
                    query=str(q["query"]).strip(),
                    documents=[text],
                    gold=gold,
                    task="qmsum",
                    answer=q.get("answer"),
                    document_id=doc_id,
                )
            )
    return examples


def _render_turns(turns: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """``Speaker: content`` per turn, joined by blank lines; the span of each turn's line."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for turn in turns:
        line = f"{' '.join(str(turn.get('speaker', '')).split())}: {' '.join(str(turn.get('content', '')).split())}"
        if parts:
            parts.append("\n\n")
            pos += 2
        spans.append((pos, pos + len(line)))
        parts.append(line)
        pos += len(line)
    return "".join(parts), spans


def _qmsum_turns(ranges: object, n_turns: int, doc_id: str, qi: int) -> set[int]:
    """Turn indices of a query's ``relevant_text_span`` ranges (inclusive); ranges past the meeting are clipped."""
    out: set[int] = set()
    if not isinstance(ranges, list):
        raise ValueError(f"QMSum {doc_id} query {qi}: relevant_text_span must be a list of [first, last] pairs")
    for pair in ranges:
        try:
            first, last = (int(x) for x in pair)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"QMSum {doc_id} query {qi}: bad relevant_text_span entry {pair!r}") from exc
        if last >= n_turns:
            logger.warning("QMSum %s query %d: span %s past the %d turns; clipped", doc_id, qi, pair, n_turns)
        out.update(range(max(0, first), min(last, n_turns - 1) + 1))
    return out


def load_real(name: str, *, data_dir: Path | None = None, **options: Unpack[RealOptions]) -> list[LabelledExample]:
    """Questions of a real-document set (``covidqa``, ``qmsum``) from the shared data, grouped by document."""
    if name not in REAL_FILES:
        raise ValueError(f"unknown real-document set {name!r}; known: {list(REAL_FILES)}")
    loader = covidqa_examples if name == "covidqa" else qmsum_examples
    return loader(resolve_task_path(name, data_dir), **options)
