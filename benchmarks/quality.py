"""Retrieval quality benchmark: every method ranks the same sentence units of the same long documents.

    python -m benchmarks.quality                       # full run: 30 questions x 5 tasks x 3 lengths
    python -m benchmarks.quality --quick               # 3 questions per task, one short length (CI smoke run)
    python -m benchmarks.quality --methods bm25,dense,attention,attention-nocal --readme README.md

Documents come from ``shared_core.datasets`` (bAbI stories scattered among renamed facts of other stories; HotpotQA
questions buried among other questions' paragraphs), read from ``../shared/data`` or ``$ATTNRET_DATA``. Each document is
segmented once with the core retriever's own segmentation and every method scores those units. Metrics per task,
length and method: nDCG@10, Recall@5, Recall@10, and Recall@10 of the gold sentences that share no content word with
the query ("no-overlap recall", the causal-hop case), with the number of questions and seconds per document.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
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
from shared_core.datasets import LabelledExample, content_words, gold_units, load_examples, shared_data_dir
from shared_core.metrics import tie_aware_metrics

logger = logging.getLogger("benchmarks.quality")

README_START, README_END = markers("quality")

DEFAULT_TASKS = ("babi-qa1", "babi-qa2", "babi-qa12", "babi-qa14", "hotpotqa")
DEFAULT_WORDS = (1500, 6000, 20000)
QUICK_WORDS = 800
QUICK_N = 3
EVAL_OFFSET = 50
"""Each task's first questions (seeded order for bAbI, file order for HotpotQA) are left to head detection."""

METRICS = ("ndcg@10", "recall@5", "recall@10", "nooverlap_recall@10")

Override = dict[str, Any] | Callable[[Any], dict[str, Any]]
"""A retriever-config override: a nested dict, or a function of the default retriever returning one."""


@dataclass(frozen=True)
class Method:
    """A benchmarked method: a baseline (``bm25``, ``dense``), the retriever with a config override, or the
    ``output_attentions`` reference (``naive``: the retriever's scoring read from full eager maps)."""

    kind: Literal["bm25", "dense", "retriever", "naive"]
    override: Override | None = None


# One line per method. Retriever overrides are merged into the base config (``--config`` or the defaults).
_ATTENTION_ONLY = {"dense": {"enabled": False}, "lexical": {"enabled": False}, "entities": {"enabled": False}}
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
        lambda r: {**_ATTENTION_ONLY, "attention": {"heads": "all", "layers": list(range(r.model.num_layers))}},
    ),
    # attention alone with the shipped (detected) QR-head set of the model, as the default config reads it
    "qr-heads": Method("retriever", {**_ATTENTION_ONLY, "attention": {"heads": "auto"}}),
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
    """Segment every document of ``example`` and map its gold spans (and the no-overlap ones) to unit indices."""
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
        gold |= {base + i for i in gold_units(units, example.gold, d)}
        lexical_gap = [g for g in example.gold if not (content_words(doc[g.start : g.end]) & query_words)]
        nooverlap |= {base + i for i in gold_units(units, lexical_gap, d)}
    return Prepared(example, spans, texts, gold, nooverlap)


def question_metrics(scores: np.ndarray, prepared: Prepared) -> dict[str, float]:
    """nDCG@10, Recall@5/10 and (when the question has lexical-gap gold) the no-overlap Recall@10.

    Expected values under random tie-breaking: BM25 gives every sentence naming the query's person the same score,
    and one shuffle of such ties would make a method lucky or unlucky.
    """
    out = tie_aware_metrics(scores, prepared.gold)
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

    def dense(self) -> Any:
        """The dense scorer (all-MiniLM-L6-v2 by default), created on first use."""
        if self._dense is None:
            from shared_core.dense import DenseConfig, DenseScorer

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
        for d, doc in enumerate(example.documents):
            hits = retriever.score_units(example.query, doc)
            expected = [(s, e) for dd, s, e in prepared.spans if dd == d]
            if [(h.start, h.end) for h in hits] != expected:
                raise RuntimeError(f"method {name!r} segments documents differently from the benchmark's units")
            scores.extend(h.score for h in hits)
        return np.asarray(scores, dtype=np.float64)

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
) -> dict[str, Any]:
    """Build the documents, score them with every method and return the results dictionary (JSON-ready)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {sorted(METHODS)}")
    scorers = Scorers(base_config)
    scorers.warm_up(methods)
    rows: list[dict[str, Any]] = []
    per_question: list[dict[str, Any]] = []
    jobs = []
    for task in tasks:
        for w in words:
            examples = load_examples(task, n=n, target_words=w, seed=seed, offset=offset)
            jobs.extend((task, w, ex) for ex in examples)
    timings: dict[tuple[str, int, str], list[float]] = {}
    for task, w, example in tqdm(jobs, desc="questions", disable=not progress):
        prepared = prepare(example, scorers.segment)
        if not prepared.gold:
            logger.warning("%s: no unit overlaps the gold spans; skipped", example.id)
            continue
        for name in methods:
            t0 = time.perf_counter()
            try:
                scores = scorers.score(name, prepared)
            except DoesNotFit as exc:
                logger.warning("%s: %s skipped: %s", example.id, name, exc)
                continue
            elapsed = (time.perf_counter() - t0) / len(example.documents)
            timings.setdefault((task, w, name), []).append(elapsed)
            record = {"id": example.id, "task": task, "words": w, "method": name, "units": len(prepared.spans)}
            record.update(question_metrics(scores, prepared))
            per_question.append(record)
    for task in tasks:
        for w in words:
            for name in methods:
                rows.append(_aggregate(per_question, timings, task, w, name))
    for w in words:
        for name in methods:
            rows.append(_overall(rows, tasks, w, name))
    settings = {
        "tasks": list(tasks),
        "words": list(words),
        "n": n,
        "methods": list(methods),
        "seed": seed,
        "offset": offset,
        "config": base_config if base_config is None or isinstance(base_config, str | dict) else str(base_config),
    }
    return {"meta": run_metadata(), "settings": settings, "results": rows, "per_question": per_question}


def _aggregate(
    per_question: Sequence[dict[str, Any]], timings: dict[tuple[str, int, str], list[float]], task: str, w: int, m: str
) -> dict[str, Any]:
    """Mean metrics of one (task, length, method) over its questions; no-overlap recall over those that have it."""
    records = [r for r in per_question if r["task"] == task and r["words"] == w and r["method"] == m]
    row: dict[str, Any] = {"task": task, "words": w, "method": m, "n": len(records)}
    for key in METRICS:
        values = [r[key] for r in records if key in r]
        row[key] = float(np.mean(values)) if values else None
    row["n_nooverlap"] = sum(1 for r in records if "nooverlap_recall@10" in r)
    row["sec_per_doc"] = float(np.mean(timings[(task, w, m)])) if timings.get((task, w, m)) else None
    return row


def _overall(rows: Sequence[dict[str, Any]], tasks: Sequence[str], w: int, m: str) -> dict[str, Any]:
    """Macro average over tasks (each task weighs the same), with the total number of questions."""
    parts = [r for r in rows if r["task"] in tasks and r["words"] == w and r["method"] == m and r["n"]]
    row: dict[str, Any] = {"task": "overall", "words": w, "method": m, "n": sum(r["n"] for r in parts)}
    for key in (*METRICS, "sec_per_doc"):
        values = [r[key] for r in parts if r[key] is not None]
        row[key] = float(np.mean(values)) if values else None
    row["n_nooverlap"] = sum(r["n_nooverlap"] for r in parts)
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
        n = next(iter(cells.values()))["n"]
        lines.append(f"| {task} | {w} | {n} | " + " | ".join(shown) + " |")
    lines += [
        "",
        "All metrics. No-overlap R@10: recall of the gold sentences that share no content word with the query "
        "(n = questions that have one). s/doc: seconds per document to score its units (for the retriever methods "
        "this includes the model's prefill and the retriever's own segmentation).",
        "",
        "| task | words | method | n | nDCG@10 | R@5 | R@10 | no-overlap R@10 (n) | s/doc |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['words']} | {r['method']} | {r['n']} | {_fmt(r['ndcg@10'])} | {_fmt(r['recall@5'])} "
            f"| {_fmt(r['recall@10'])} | {_fmt(r['nooverlap_recall@10'])} ({r['n_nooverlap']}) "
            f"| {_fmt(r['sec_per_doc'], 2)} |"
        )
    return "\n".join(lines)


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
    axes = (settings.get("tasks", ()), settings.get("words", ()), settings.get("methods", ()))
    produced = set(itertools.product(*axes))
    return bool(produced) and produced <= groups


def merge_results(earlier: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Add a run to earlier results: the new run's (task, length, method) rows and questions replace the old."""
    groups = {(r["task"], r["words"], r["method"]) for r in new["results"]}
    keep = [r for r in earlier["results"] if (r["task"], r["words"], r["method"]) not in groups]
    questions = [q for q in earlier["per_question"] if (q["task"], q["words"], q["method"]) not in groups]
    rows = keep + new["results"]
    tasks = {t: i for i, t in enumerate(dict.fromkeys(r["task"] for r in rows if r["task"] != "overall"))}
    tasks["overall"] = len(tasks)
    methods = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: (r["words"], tasks[r["task"]], methods.get(r["method"], len(methods))))
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
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated: babi-qaN, hotpotqa")
    p.add_argument("--words", default=None, help=f"document lengths in words (default {DEFAULT_WORDS})")
    p.add_argument("--n", type=int, default=None, help="questions per task and length (default 30)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated, from {sorted(METHODS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--offset", type=int, default=EVAL_OFFSET, help="questions of each task left out (for head detection)"
    )
    p.add_argument("--config", default=None, help="base RetrieverConfig YAML for the retriever methods")
    p.add_argument("--out", default="benchmarks/results/quality.json", help="JSON results path")
    p.add_argument("--readme", default=None, help="README to update between the quality markers")
    p.add_argument("--append", action="store_true", help="merge into the results already in --out (other lengths)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.n is None:
        args.n = QUICK_N if args.quick else 30
    if args.words is None:
        args.words = str(QUICK_WORDS) if args.quick else ",".join(map(str, DEFAULT_WORDS))
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
