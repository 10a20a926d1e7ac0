"""Built documents from HotpotQA: a question's paragraphs buried among other questions' paragraphs, gold = its
supporting-fact sentences."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared_core.evaluation.examples import GoldSpan, LabelledExample, word_count

logger = logging.getLogger(__name__)


def load_hotpot(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected the HotpotQA JSON list of questions")
    return data


def hotpot_examples(
    path: str | Path, *, n: int, target_words: int, seed: int, offset: int = 0
) -> list[LabelledExample]:
    """Questions ``offset .. offset+n`` (file order), each buried among other questions' paragraphs.

    One document per question: its 10 context paragraphs plus paragraphs of other questions (titles not in its own
    context, each title once), shuffled together with a seeded generator until about ``target_words`` words. Each
    paragraph is ``"Title\\n"`` followed by its stripped sentences joined by spaces; gold = the supporting sentences.
    """
    if n <= 0 or target_words <= 0 or offset < 0:
        raise ValueError("n and target_words must be positive and offset non-negative")
    data = load_hotpot(path)
    examples: list[LabelledExample] = []
    for qi in range(offset, min(len(data), offset + n)):
        q = data[qi]
        rng = np.random.default_rng([seed, qi])
        own_titles = {title for title, _ in q["context"]}
        own = [(title, list(sents), True) for title, sents in q["context"]]
        words = sum(_paragraph_words(title, sents) for title, sents, _ in own)
        pool: list[tuple[str, list[str], bool]] = []
        seen = set(own_titles)
        for oi in rng.permutation(len(data)):
            if words >= target_words:
                break
            if int(oi) == qi:
                continue
            for title, sents in data[int(oi)]["context"]:
                if words >= target_words:
                    break
                if title in seen:
                    continue
                seen.add(title)
                pool.append((title, list(sents), False))
                words += _paragraph_words(title, sents)
        paragraphs = own + pool
        order = rng.permutation(len(paragraphs))
        examples.append(_hotpot_example(q, [paragraphs[int(i)] for i in order]))
    return examples


def _paragraph_words(title: str, sentences: Sequence[str]) -> int:
    return word_count(title) + sum(word_count(s) for s in sentences)


def _hotpot_example(q: dict, paragraphs: Sequence[tuple[str, list[str], bool]]) -> LabelledExample:
    """Render paragraphs and map ``supporting_facts`` ``[title, sentence_index]`` of the question's own context."""
    wanted = {(title, int(i)) for title, i in q["supporting_facts"]}
    parts: list[str] = []
    pos = 0
    gold: list[GoldSpan] = []
    found: set[tuple[str, int]] = set()
    for title, sentences, own in paragraphs:
        if parts:
            parts.append("\n\n")
            pos += 2
        head = title.strip() + "\n"
        parts.append(head)
        pos += len(head)
        first = True
        for i, raw in enumerate(sentences):
            sentence = raw.strip()
            if not sentence:
                continue
            if not first:
                parts.append(" ")
                pos += 1
            first = False
            if own and (title, i) in wanted:
                gold.append(GoldSpan(0, pos, pos + len(sentence)))
                found.add((title, i))
            parts.append(sentence)
            pos += len(sentence)
    missing = wanted - found
    if missing:
        logger.warning("HotpotQA %s: supporting facts not found in context: %s", q.get("_id"), sorted(missing))
    return LabelledExample(
        id=str(q["_id"]),
        query=q["question"],
        documents=["".join(parts)],
        gold=gold,
        task="hotpotqa",
        answer=q["answer"],
    )
