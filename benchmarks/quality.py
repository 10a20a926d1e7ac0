"""Retrieval quality benchmark: every method ranks the same sentence units of the same long documents.

    python -m benchmarks.quality                       # full run: 30 questions x 5 tasks x 3 lengths + real sets
    python -m benchmarks.quality --quick               # 3 questions per task, one short length (CI smoke run)
    python -m benchmarks.quality --methods bm25,dense,attention,attention-nocal --readme README.md
    python -m benchmarks.quality --tasks covidqa --docs 5 --per-doc 4 --append --readme README.md

Documents come from ``shared_core.evaluation`` (bAbI stories scattered among renamed facts of other stories; HotpotQA
questions buried among other questions' paragraphs; COVID-QA papers and QMSum meeting transcripts kept whole, of
their held-out documents), read from ``../shared/data`` or ``$ATTNRET_DATA``. Each document is segmented once with the
core retriever's own segmentation and every method scores those units. The questions of one real document are asked
together (``score_units_many``: the document is read once for all, as a user asks them); their rows have length 0
("whole") and their macro average is ``overall-real``. Metrics per task, length and method: nDCG@10, Recall@5,
Recall@10, hit@1, and Recall@10 of the gold units that share no content word with the query ("no-overlap recall",
the causal-hop case), with the number of questions and seconds per question.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from benchmarks.baselines import bm25_scores
from benchmarks.naive import DoesNotFit, NaiveAttentionRetriever
from benchmarks.report import command_line, markers, provenance_line, run_metadata, update_readme_section
from shared_core.evaluation import (
    REAL_TASKS,
    LabelledExample,
    content_words,
    gold_units,
    group_by_document,
    load_examples,
    load_real,
    shared_data_dir,
    tie_aware_metrics,
)

logger = logging.getLogger("benchmarks.quality")

README_START, README_END = markers("quality")

SYNTHETIC_TASKS = ("babi-qa1", "babi-qa2", "babi-qa12", "babi-qa14", "hotpotqa")
DEFAULT_TASKS = (*SYNTHETIC_TASKS, *REAL_TASKS)
DEFAULT_WORDS = (1500, 6000, 20000)
QUICK_WORDS = 800
"""Length of the quick run's built documents; real documents are cut after the paragraph/turn reaching it."""
QUICK_N = 3
EVAL_OFFSET = 50
"""Each task's first questions (seeded order for bAbI, file order for HotpotQA) are left to head detection."""
REAL_WORDS = 0
"""The length key of real-document rows: documents are kept whole (their mean length is in ``doc_words``)."""
REAL_OVERALL = "overall-real"
DEFAULT_DOCS, DEFAULT_PER_DOC = 5, 4
"""Held-out documents per real set and questions per document of a full run."""

METRICS = ("ndcg@10", "recall@5", "recall@10", "hit@1", "nooverlap_recall@10")

Override = dict[str, Any] | Callable[[Any], dict[str, Any]]
"""A retriever-config override: a nested dict, or a function of the default retriever returning one."""


@dataclass(frozen=True)
class Method:
    """A benchmarked method: a baseline (``bm25``, ``dense``), the retriever with a config override, or the
    ``output_attentions`` reference (``naive``: the retriever's scoring read from full eager maps)."""

    kind: Literal["bm25", "dense", "retriever", "naive"]
    override: Override | None = None


# One line per method. Retriever overrides are merged into the base config (``--config`` or the defaults).
_ATTENTION_ONLY = {
    "dense": {"enabled": False},
    "lexical": {"enabled": False},
    "entities": {"enabled": False},
    "fusion": {"context": 0.0, "paragraph_context": 0.0},  # the view alone: no neighbours' share either
}
_ALL_HEADS = {**_ATTENTION_ONLY, "attention": {"heads": "all"}}
METHODS: dict[str, Method] = {
    "bm25": Method("bm25"),
    "dense": Method("dense"),
    # attention alone, all heads of the default layer band
    "attention": Method("retriever", _ALL_HEADS),
    # the same scores from `output_attentions` (n x n maps per layer and head); only where the maps fit in memory
    "naive-attention": Method("naive", _ALL_HEADS),
    "attention-nocal": Method("retriever", {**_ATTENTION_ONLY, "attention": {"heads": "all", "calibration": False}}),
    "attention-all-layers": Method(
        "retriever",
        lambda r: {**_ATTENTION_ONLY, "attention": {"heads": "all", "layers": list(range(r.model.shape.num_layers))}},
    ),
    # attention alone with the config's own head set (the default config's `heads: auto`: the model's shipped set);
    # a config reading every head (`heads: all`) gets the shipped set here, as `attention` already measures all heads
    "qr-heads": Method(
        "retriever",
        lambda r: {
            **_ATTENTION_ONLY,
            "attention": {"heads": "auto" if r.config.attention.heads == "all" else r.config.attention.heads},
        },
    ),
    "fused": Method("retriever", {"entities": {"enabled": False}}),  # attention + dense + lexical
    "fused+entities": Method("retriever", {}),  # the default configuration
    # the default without the lexical view (attention + dense + entities): what the lexical view adds
    "fused-lexical+entities": Method("retriever", {"lexical": {"enabled": False}}),
}
DEFAULT_METHODS = ("bm25", "dense", "attention", "naive-attention", "qr-heads", "fused", "fused+entities")


# ---------------------------------------------------------------------------------------------------------------
# Scoring


@dataclass
class Prepared:
    """An example with its units segmented once: ``spans[i] = (document_index, start, end)`` in ranking order."""

    example: LabelledExample
    spans: list[tuple[int, int, int]]
    texts: list[str]
    gold: set[int]
    nooverlap_gold: set[int]


def prepare(example: LabelledExample, segment: Callable[[str], list[tuple[int, int]]]) -> Prepared:
    """Segment every document of ``example`` and map its gold spans to unit indices; no-overlap gold = the gold
    units whose text shares no content word with the query."""
    spans: list[tuple[int, int, int]] = []
    texts: list[str] = []
    gold: set[int] = set()
    nooverlap: set[int] = set()
    query_words = content_words(example.query)
    for d, doc in enumerate(example.documents):
        units = segment(doc)
        base = len(spans)
        spans.extend((d, s, e) for s, e in units)
        texts.extend(doc[s:e] for s, e in units)
        own = gold_units(units, example.gold, d)
        gold |= {base + i for i in own}
        nooverlap |= {base + i for i in own if not (content_words(doc[units[i][0] : units[i][1]]) & query_words)}
    return Prepared(example, spans, texts, gold, nooverlap)


def question_metrics(scores: np.ndarray, prepared: Prepared) -> dict[str, float]:
    """nDCG@10, Recall@5/10, hit@1 and (when the question has lexical-gap gold) the no-overlap Recall@10.

    Expected values under random tie-breaking: BM25 gives every sentence naming the query's person the same score,
    and one shuffle of such ties would make a method lucky or unlucky.
    """
    out = tie_aware_metrics(scores, prepared.gold, hit_ks=(1,))
    if prepared.nooverlap_gold:
        out["nooverlap_recall@10"] = tie_aware_metrics(scores, prepared.nooverlap_gold, (), (10,))["recall@10"]
    return out


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Scorers:
    """Builds each method's scorer lazily: one retriever per distinct config, one dense model for the run."""

    def __init__(self, base_config: Any = None) -> None:
        from shared_core import AttentionRetriever, RetrieverConfig

        self._config_cls = RetrieverConfig
        self._retriever_cls = AttentionRetriever
        self.base = RetrieverConfig.coerce(base_config)
        self.default = AttentionRetriever(self.base)
        self._retrievers: dict[str, Any] = {"retriever" + self._key(self.base): self.default}
        self._dense: Any = None
        self.views: dict[str, list[dict[str, np.ndarray]]] = {}
        """Raw views (attention, dense, lexical) per question id and document, from the default config's runs:
        what ``benchmarks.tune_fusion`` replays fusion settings over."""

    def _keep_views(self, retriever: Any, example_id: str, per_document: list[list[Any]]) -> None:
        if retriever is self.default:
            names = ("attention", "dense", "lexical")
            self.views[example_id] = [
                {v: np.array([h.scores[v] for h in hits]) for v in names if hits and v in hits[0].scores}
                for hits in per_document
            ]

    @staticmethod
    def _key(config: Any) -> str:
        return json.dumps(config.model_dump(mode="json"), sort_keys=True)

    def segment(self, document: str) -> list[tuple[int, int]]:
        """The core retriever's own units of ``document`` as ``(start, end)`` pairs."""
        return [(u.start, u.end) for u in self.default.units(document)]

    def retriever(self, method: Method) -> Any:
        """The retriever for a method's override (shared by methods with equal configs and kind)."""
        override = method.override(self.default) if callable(method.override) else (method.override or {})
        config = self._config_cls.model_validate(_deep_merge(self.base.model_dump(mode="json"), override))
        key = method.kind + self._key(config)
        if key not in self._retrievers:
            retriever = (NaiveAttentionRetriever if method.kind == "naive" else self._retriever_cls)(config)
            retriever.share_caches(self.default)  # prefill each document once for every method
            self._retrievers[key] = retriever
        return self._retrievers[key]

    def head_sets(self, methods: Sequence[str]) -> dict[str, str]:
        """The head set each retriever method read (a head-set file's path, "config", "layers"), for the result
        file: a config naming a head-set file and `heads: auto` read different sets under the same method name."""
        out = {}
        for name in methods:
            if METHODS[name].kind in ("retriever", "naive"):
                out[name] = str(self.retriever(METHODS[name]).head_selection.source)
        return out

    def dense(self) -> Any:
        """The dense scorer (all-MiniLM-L6-v2 by default), created on first use."""
        if self._dense is None:
            from shared_core.config import DenseConfig
            from shared_core.views.dense import DenseScorer

            self._dense = DenseScorer(DenseConfig())
        return self._dense

    def score(self, name: str, prepared: Prepared) -> np.ndarray:
        """Scores of every unit of ``prepared`` (all documents, ranking order) by method ``name``."""
        method = METHODS[name]
        example = prepared.example
        if method.kind == "bm25":
            return bm25_scores(example.query, prepared.texts)
        if method.kind == "dense":
            return np.asarray(self.dense().score(example.query, prepared.texts), dtype=np.float64)
        retriever = self.retriever(method)
        scores: list[float] = []
        per_document = []
        for d, doc in enumerate(example.documents):
            hits = retriever.score_units(example.query, doc)
            expected = [(s, e) for dd, s, e in prepared.spans if dd == d]
            if [(h.start, h.end) for h in hits] != expected:
                raise RuntimeError(f"method {name!r} segments documents differently from the benchmark's units")
            scores.extend(h.score for h in hits)
            per_document.append(hits)
        self._keep_views(retriever, example.id, per_document)
        return np.asarray(scores, dtype=np.float64)

    def score_many(self, name: str, group: Sequence[Prepared]) -> list[np.ndarray]:
        """Scores of each question of ``group`` (questions over one same document), the document read once.

        Retriever methods ask every question in one ``score_units_many`` call (the KV cache is reused); the dense
        baseline embeds the units once and scores each query against them, as a user's index would.
        """
        method = METHODS[name]
        doc = group[0].example.documents[0]
        if any(len(p.example.documents) != 1 or p.example.documents[0] != doc for p in group):
            raise ValueError("score_many() needs questions over one same single document")
        texts = group[0].texts
        if method.kind == "bm25":
            return [bm25_scores(p.example.query, texts) for p in group]
        if method.kind == "dense":
            embeddings = self.dense().embed(texts)
            return [np.asarray(self.dense().score(p.example.query, embeddings), dtype=np.float64) for p in group]
        retriever = self.retriever(method)
        per_query = retriever.score_units_many([p.example.query for p in group], doc)
        expected = [(s, e) for _, s, e in group[0].spans]
        out = []
        for p, hits in zip(group, per_query, strict=True):
            if [(h.start, h.end) for h in hits] != expected:
                raise RuntimeError(f"method {name!r} segments documents differently from the benchmark's units")
            out.append(np.asarray([h.score for h in hits], dtype=np.float64))
            self._keep_views(retriever, p.example.id, [hits])
        return out

    def view_cases(self, prepared: Sequence[Prepared], per_question: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """For each question the default config scored: its units, raw views, entity index and baselines' nDCG@10
        (``benchmarks.tune_fusion --cases`` replays fusion settings over these without the model)."""
        baselines: dict[str, dict[str, float]] = {}
        for r in per_question:
            if r["method"] in ("bm25", "dense"):
                baselines.setdefault(r["id"], {})[r["method"]] = r["ndcg@10"]
        cases = []
        for p in prepared:
            if p.example.id not in self.views:
                continue
            docs = [
                (views, self.default.units(doc), self.default.entity_index(doc))
                for views, doc in zip(self.views[p.example.id], p.example.documents, strict=True)
            ]
            cases.append(
                {"task": p.example.task, "prepared": p, "docs": docs, "baselines": baselines.get(p.example.id, {})}
            )
        return cases

    def warm_up(self, names: Sequence[str]) -> None:
        """Load every model the methods need before timing starts."""
        for name in names:
            method = METHODS[name]
            if method.kind in ("retriever", "naive"):
                self.retriever(method).warm_up()
            elif method.kind == "dense":
                self.dense().warm_up()


# ---------------------------------------------------------------------------------------------------------------
# Running and aggregating


def run_benchmark(
    tasks: Sequence[str],
    words: Sequence[int],
    n: int,
    methods: Sequence[str],
    *,
    seed: int = 0,
    offset: int = EVAL_OFFSET,
    base_config: Any = None,
    progress: bool = True,
    docs: int = DEFAULT_DOCS,
    per_doc: int = DEFAULT_PER_DOC,
    real_max_words: int | None = None,
    views_out: Path | None = None,
    real_split: str = "held-out",
) -> dict[str, Any]:
    """Build the documents, score them with every method and return the results dictionary (JSON-ready).

    Built tasks: ``n`` questions per task and length in ``words``. Real sets (``covidqa``, ``qmsum``): ``per_doc``
    questions of each of the first ``docs`` held-out documents (``real_split='held-in'``: held-in ones, for checks
    that choose something), whole (or cut after ``real_max_words`` words).
    ``views_out``: pickle the default config's raw views of every question there (for ``benchmarks.tune_fusion``).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {sorted(METHODS)}")
    scorers = Scorers(base_config)
    scorers.warm_up(methods)
    per_question: list[dict[str, Any]] = []
    timings: dict[tuple[str, int, str], list[float]] = {}
    jobs: list[tuple[str, int, list[LabelledExample]]] = []
    for task in tasks:
        if task in REAL_TASKS:
            examples = load_real(
                task, split=real_split, n_documents=docs, per_document=per_doc, seed=seed, max_words=real_max_words
            )
            jobs.extend((task, REAL_WORDS, group) for group in group_by_document(examples))
            continue
        for w in words:
            jobs.extend((task, w, [ex]) for ex in load_examples(task, n=n, target_words=w, seed=seed, offset=offset))
    every: list[Prepared] = []
    for task, w, group in tqdm(jobs, desc="documents", disable=not progress):
        prepared = []
        for example in group:
            p = prepare(example, scorers.segment)
            if p.gold:
                prepared.append(p)
                every.append(p)
            else:
                logger.warning("%s: no unit overlaps the gold spans; skipped", example.id)
        if not prepared:
            continue
        for name in methods:
            t0 = time.perf_counter()
            try:
                if w == REAL_WORDS:
                    all_scores = scorers.score_many(name, prepared)
                else:
                    all_scores = [scorers.score(name, prepared[0])]
            except DoesNotFit as exc:
                logger.warning("%s: %s skipped: %s", prepared[0].example.id, name, exc)
                continue
            elapsed = (time.perf_counter() - t0) / len(prepared)
            for p, scores in zip(prepared, all_scores, strict=True):
                timings.setdefault((task, w, name), []).append(elapsed)
                record = {"id": p.example.id, "task": task, "words": w, "method": name, "units": len(p.spans)}
                record["doc_words"] = len(p.example.documents[0].split())
                record.update(question_metrics(scores, p))
                per_question.append(record)
    if views_out is not None:
        views_out.parent.mkdir(parents=True, exist_ok=True)
        views_out.write_bytes(pickle.dumps(scorers.view_cases(every, per_question)))
        logger.info("wrote the default config's views of %d questions to %s", len(scorers.views), views_out)
    rows = [
        _aggregate(per_question, timings, task, w, name)
        for task in tasks
        for w in ([REAL_WORDS] if task in REAL_TASKS else words)
        for name in methods
    ]
    settings = {
        "tasks": list(tasks),
        "words": list(words),
        "n": n,
        "docs": docs,
        "per_doc": per_doc,
        "real_max_words": real_max_words,
        "methods": list(methods),
        "seed": seed,
        "offset": offset,
        "config": base_config if base_config is None or isinstance(base_config, str | dict) else str(base_config),
        "head_sets": scorers.head_sets(methods),
    }
    return {"meta": run_metadata(), "settings": settings, "results": with_overall(rows), "per_question": per_question}


def with_overall(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-task rows plus, per length and method, their macro average: ``overall`` over the built tasks at
    each length, ``overall-real`` over the real sets."""
    tasks = [r for r in rows if r["task"] not in ("overall", REAL_OVERALL)]
    out = list(tasks)
    for w, m in dict.fromkeys((r["words"], r["method"]) for r in tasks):
        out.append(_overall(tasks, w, m))
    order = {t: i for i, t in enumerate(dict.fromkeys(r["task"] for r in out if r["task"] not in _OVERALLS))}
    order.update({t: len(order) for t in _OVERALLS})
    methods = {m: i for i, m in enumerate(METHODS)}
    out.sort(key=lambda r: (_length_key(r["words"]), order[r["task"]], methods.get(r["method"], len(methods))))
    return out


_OVERALLS = ("overall", REAL_OVERALL)


def _length_key(words: int) -> float:
    """Built lengths in increasing order, the whole real documents after them."""
    return float("inf") if words == REAL_WORDS else float(words)


def _aggregate(
    per_question: Sequence[dict[str, Any]], timings: dict[tuple[str, int, str], list[float]], task: str, w: int, m: str
) -> dict[str, Any]:
    """Mean metrics of one (task, length, method) over its questions; no-overlap recall over those that have it;
    seconds per question (``sec_per_doc``: a built question has its own document)."""
    records = [r for r in per_question if r["task"] == task and r["words"] == w and r["method"] == m]
    row: dict[str, Any] = {"task": task, "words": w, "method": m, "n": len(records)}
    for key in METRICS:
        values = [r[key] for r in records if key in r]
        row[key] = float(np.mean(values)) if values else None
    row["n_nooverlap"] = sum(1 for r in records if "nooverlap_recall@10" in r)
    row["sec_per_doc"] = float(np.mean(timings[(task, w, m)])) if timings.get((task, w, m)) else None
    if w == REAL_WORDS:
        row["doc_words"] = float(np.mean([r["doc_words"] for r in records])) if records else None
    return row


def _overall(rows: Sequence[dict[str, Any]], w: int, m: str) -> dict[str, Any]:
    """Macro average over the tasks of one length (each task weighs the same), with the total number of questions."""
    parts = [r for r in rows if r["words"] == w and r["method"] == m and r["n"]]
    task = REAL_OVERALL if w == REAL_WORDS else "overall"
    row: dict[str, Any] = {"task": task, "words": w, "method": m, "n": sum(r["n"] for r in parts)}
    for key in (*METRICS, "sec_per_doc"):
        values = [r.get(key) for r in parts if r.get(key) is not None]
        row[key] = float(np.mean(values)) if values else None
    row["n_nooverlap"] = sum(r["n_nooverlap"] for r in parts)
    if w == REAL_WORDS:
        row["doc_words"] = float(np.mean([r["doc_words"] for r in parts])) if parts else None
    return row


# ---------------------------------------------------------------------------------------------------------------
# Provenance, tables and the README section


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(results: dict[str, Any]) -> str:
    """Markdown: an nDCG@10 overview (tasks x methods, best in bold) and the full table with every metric."""
    rows = results["results"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    groups = list(dict.fromkeys((r["task"], r["words"]) for r in rows))
    lines = ["nDCG@10 (best per row in bold):", "", "| task | words | n | " + " | ".join(methods) + " |"]
    lines.append("|---|---:|---:|" + "---:|" * len(methods))
    for task, w in groups:
        cells = {r["method"]: r for r in rows if r["task"] == task and r["words"] == w}
        values = [cells[m]["ndcg@10"] if m in cells else None for m in methods]
        best = max((v for v in values if v is not None), default=None)
        shown = [f"**{_fmt(v)}**" if v is not None and v == best else _fmt(v) for v in values]
        n = max(r["n"] for r in cells.values())
        lines.append(f"| {task} | {_words(cells)} | {n} | " + " | ".join(shown) + " |")
    lines += [
        "",
        "All metrics. hit@1: the first unit is gold. No-overlap R@10: recall of the gold units that share no content "
        "word with the query (n = questions that have one). s/query: seconds per question to score every unit (a "
        "built question has its own document, so for the retriever methods this includes the document's prefill and "
        'segmentation; a real document\'s questions share one read of it). Real sets: documents whole ("whole", '
        "mean words in brackets), held-out documents only.",
        "",
        "| task | words | method | n | nDCG@10 | R@5 | R@10 | hit@1 | no-overlap R@10 (n) | s/query |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {_words({'': r})} | {r['method']} | {r['n']} | {_fmt(r['ndcg@10'])} "
            f"| {_fmt(r['recall@5'])} | {_fmt(r['recall@10'])} | {_fmt(r.get('hit@1'))} "
            f"| {_fmt(r['nooverlap_recall@10'])} ({r['n_nooverlap']}) | {_fmt(r['sec_per_doc'], 2)} |"
        )
    return "\n".join(lines)


def _words(cells: dict[str, dict[str, Any]]) -> str:
    """The length cell: the built length, or ``whole (mean words)`` for real documents."""
    row = next(iter(cells.values()))
    if row["words"] != REAL_WORDS:
        return str(row["words"])
    mean = max((r.get("doc_words") or 0 for r in cells.values()), default=0)
    return f"whole ({mean:,.0f})" if mean else "whole"


def readme_section(results: dict[str, Any]) -> str:
    """The README block: per run (one, or several merged with --append) its provenance and command; the tables."""
    lines = []
    for run in _runs(results):
        command = run["settings"].get("command", "python -m benchmarks.quality")
        lines += [f"{provenance_line(run['meta'])} Reproduce: `{command}`", ""]
    return "\n".join([*lines, markdown_table(results)])


def _runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs behind `results`: those merged with --append, or the one run that wrote them."""
    return results.get("runs") or [{"meta": results["meta"], "settings": results.get("settings", {})}]


def _superseded(run: dict[str, Any], groups: set[tuple[str, int, str]]) -> bool:
    """Whether every (task, length, method) row of `run` is replaced by `groups` (its provenance then goes too)."""
    settings = run["settings"]
    words = settings.get("words", ())
    produced = {
        (t, w, m)
        for t in settings.get("tasks", ())
        for w in ([REAL_WORDS] if t in REAL_TASKS else words)
        for m in settings.get("methods", ())
    }
    return bool(produced) and produced <= groups


def merge_results(earlier: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Add a run to earlier results: the new run's (task, length, method) rows and questions replace the old; the
    overall rows are recomputed from the merged per-task rows."""
    groups = {(r["task"], r["words"], r["method"]) for r in new["results"] if r["task"] not in _OVERALLS}
    keep = [r for r in earlier["results"] if (r["task"], r["words"], r["method"]) not in groups]
    questions = [q for q in earlier["per_question"] if (q["task"], q["words"], q["method"]) not in groups]
    rows = with_overall(keep + new["results"])
    return {
        "meta": new["meta"],
        "settings": new["settings"],
        "runs": [*(run for run in _runs(earlier) if not _superseded(run, groups)), *_runs(new)],
        "results": rows,
        "per_question": questions + new["per_question"],
    }


# ---------------------------------------------------------------------------------------------------------------
# CLI


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` shrinks the run to a CI smoke test."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help=f"{QUICK_N} questions per task at {QUICK_WORDS} words (unless given)"
    )
    p.add_argument(
        "--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated: babi-qaN, hotpotqa, covidqa, qmsum"
    )
    p.add_argument("--words", default=None, help=f"document lengths in words (default {DEFAULT_WORDS})")
    p.add_argument("--n", type=int, default=None, help="questions per task and length (default 30)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated, from {sorted(METHODS)}")
    p.add_argument(
        "--docs", type=int, default=None, help=f"held-out documents per real set (default {DEFAULT_DOCS}; quick 1)"
    )
    p.add_argument(
        "--per-doc",
        type=int,
        default=None,
        help=f"questions per real document (default {DEFAULT_PER_DOC}; quick 2)",
    )
    p.add_argument(
        "--real-max-words",
        type=int,
        default=None,
        help=f"cut real documents after the paragraph/turn reaching this many words (quick: {QUICK_WORDS}, so a "
        "QMSum meeting stays within the default model's window)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--real-split",
        choices=("held-out", "held-in"),
        default="held-out",
        help="which documents of the real sets (held-in: for checks that choose a setting)",
    )
    p.add_argument(
        "--offset", type=int, default=EVAL_OFFSET, help="questions of each task left out (for head detection)"
    )
    p.add_argument("--config", default=None, help="base RetrieverConfig YAML for the retriever methods")
    p.add_argument("--out", default="benchmarks/results/quality.json", help="JSON results path")
    p.add_argument("--readme", default=None, help="README to update between the quality markers")
    p.add_argument("--append", action="store_true", help="merge into the results already in --out (other lengths)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--views-out", type=Path, default=None, help="pickle the default config's views here (tune_fusion --cases)"
    )
    args = p.parse_args(argv)
    if args.n is None:
        args.n = QUICK_N if args.quick else 30
    if args.words is None:
        args.words = str(QUICK_WORDS) if args.quick else ",".join(map(str, DEFAULT_WORDS))
    if args.docs is None:
        args.docs = 1 if args.quick else DEFAULT_DOCS
    if args.per_doc is None:
        args.per_doc = 2 if args.quick else DEFAULT_PER_DOC
    if args.real_max_words is None and args.quick:
        args.real_max_words = QUICK_WORDS
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, write the JSON and print (and optionally store in the README) the Markdown table."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if shared_data_dir() is None:
        logger.error("shared data not found: set ATTNRET_DATA to the folder holding babi/ and hotpotqa/")
        return 2
    results = run_benchmark(
        _csv(args.tasks),
        [int(w) for w in _csv(args.words)],
        args.n,
        _csv(args.methods),
        seed=args.seed,
        offset=args.offset,
        base_config=args.config,
        progress=not args.no_progress,
        docs=args.docs,
        per_doc=args.per_doc,
        real_max_words=args.real_max_words,
        views_out=args.views_out,
        real_split=args.real_split,
    )
    results["settings"]["command"] = command_line("benchmarks.quality", argv)
    out = Path(args.out)
    if args.append and out.is_file():
        results = merge_results(json.loads(out.read_text(encoding="utf-8")), results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    logger.info("wrote %s", out)
    section = readme_section(results)
    if args.readme:
        update_readme_section(args.readme, section)
        logger.info("updated the quality section of %s", args.readme)
    sys.stdout.write(section + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
