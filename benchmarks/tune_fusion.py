"""Choose the fusion defaults on held-in questions: every view is computed once, then each candidate setting
(view weights, weighted or RRF fusion, entity expansion on or off) is replayed over the same scores.

    python -m benchmarks.tune_fusion                     # 8 held-in questions per task at 1500 words
    python -m benchmarks.tune_fusion --n 12 --words 1500,6000

Held-in = each task's first questions (offset 0), the ones head detection also used; the README's quality table
is measured on later questions (``benchmarks.quality``'s offset), so the choice never sees the evaluation set.
Prints, per candidate, nDCG@10 per task and overall, and its worst margin over the better of BM25 and dense on
any task (the issue's goal: ahead of both on every set).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from benchmarks.baselines import bm25_scores
from benchmarks.quality import DEFAULT_TASKS, Prepared, Scorers, prepare, question_metrics
from benchmarks.report import run_metadata
from shared_core import ranking
from shared_core.datasets import load_examples
from shared_core.entities import EntitiesConfig
from shared_core.fusion import FusionConfig

logger = logging.getLogger("benchmarks.tune_fusion")

VIEWS = ("attention", "dense", "lexical")


@dataclass
class Case:
    """One question with every document's raw views, units and entity index."""

    task: str
    prepared: Prepared
    docs: list[tuple[dict[str, np.ndarray], Any, Any]]  # (views, units, entity index) per document
    baselines: dict[str, float]  # nDCG@10 of bm25 and dense


def collect(tasks: Sequence[str], words: Sequence[int], n: int, seed: int, offset: int) -> list[Case]:
    """Compute every view of every held-in question once (entities off, so the views are raw)."""
    scorers = Scorers()
    retriever = scorers.default
    retriever.warm_up()
    jobs = [
        (t, ex) for t in tasks for w in words for ex in load_examples(t, n=n, target_words=w, seed=seed, offset=offset)
    ]
    cases = []
    for task, example in tqdm(jobs, desc="held-in questions"):
        prepared = prepare(example, scorers.segment)
        if not prepared.gold:
            continue
        docs = []
        for doc in example.documents:
            hits = retriever.score_units(example.query, doc)
            views = {v: np.array([h.scores[v] for h in hits]) for v in VIEWS}
            docs.append((views, retriever.units(doc), retriever.entity_index(doc)))
        dense = np.concatenate([views["dense"] for views, _, _ in docs])  # the dense baseline is the dense view
        baselines = {
            "bm25": question_metrics(bm25_scores(example.query, prepared.texts), prepared)["ndcg@10"],
            "dense": question_metrics(dense, prepared)["ndcg@10"],
        }
        cases.append(Case(task, prepared, docs, baselines))
    return cases


def replay(case: Case, fusion: FusionConfig, entities: EntitiesConfig) -> float:
    """nDCG@10 of one question under one candidate setting (documents concatenated as the benchmark does)."""
    scores = []
    for views, units, index in case.docs:
        used = {k: v for k, v in views.items() if fusion.weights.get(k, 0) > 0}
        ranked = ranking.rank_units(used, units, index, fusion, entities, case.prepared.example.query)
        scores.append(ranked.final)
    return question_metrics(np.concatenate(scores), case.prepared)["ndcg@10"]


def candidates() -> list[tuple[str, FusionConfig, EntitiesConfig]]:
    """The grid: weights per view, fusion method, entity expansion on/off (entity settings at their defaults)."""
    out = []
    for att, den, lex, method, ent in itertools.product(
        (1.0, 2.0), (0.0, 0.5, 1.0), (0.0, 0.5, 1.0, 2.0), ("weighted", "rrf"), (True, False)
    ):
        weights = {"attention": att, "dense": den, "lexical": lex}
        name = f"a{att:g}/d{den:g}/l{lex:g} {method}{' +ent' if ent else ''}"
        out.append((name, FusionConfig(method=method, weights=weights), EntitiesConfig(enabled=ent)))
    return out


def evaluate(cases: list[Case]) -> list[dict[str, Any]]:
    """Per candidate: nDCG@10 per task and overall (macro), and the worst margin over max(BM25, dense)."""
    tasks = list(dict.fromkeys(c.task for c in cases))
    base = {
        t: {b: float(np.mean([c.baselines[b] for c in cases if c.task == t])) for b in ("bm25", "dense")} for t in tasks
    }
    rows = []
    for name, fusion, entities in tqdm(candidates(), desc="candidates"):
        per_task = {t: float(np.mean([replay(c, fusion, entities) for c in cases if c.task == t])) for t in tasks}
        margins = {t: per_task[t] - max(base[t].values()) for t in tasks}
        rows.append(
            {
                "candidate": name,
                "fusion": fusion.model_dump(),
                "entities": entities.enabled,
                "overall": float(np.mean(list(per_task.values()))),
                "worst_margin": min(margins.values()),
                "per_task": per_task,
            }
        )
    rows.append({"candidate": "baselines", "per_task": base})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Collect the views, replay the grid, print the best candidates and write the JSON."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m benchmarks.tune_fusion", description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    p.add_argument("--words", default="1500")
    p.add_argument("--n", type=int, default=8, help="held-in questions per task and length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/tune_fusion.json")
    p.add_argument("--top", type=int, default=15, help="candidates printed")
    p.add_argument("--cases", type=Path, default=None, help="pickle of the computed views: reused if it exists")
    args = p.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    if args.cases is not None and args.cases.is_file():
        cases = pickle.loads(args.cases.read_bytes())  # a file this script wrote (trusted, local)
    else:
        cases = collect(tasks, [int(w) for w in args.words.split(",")], args.n, args.seed, offset=0)
        if args.cases is not None:
            args.cases.write_bytes(pickle.dumps(cases))
    rows = evaluate(cases)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    payload = {"meta": run_metadata(), "settings": settings, "rows": rows}
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    base = rows[-1]["per_task"]
    lines = ["| candidate | overall | worst margin | " + " | ".join(tasks) + " |"]
    lines.append("|---|---:|---:|" + "---:|" * len(tasks))
    lines.append("| max(BM25, dense) | | | " + " | ".join(f"{max(base[t].values()):.3f}" for t in tasks) + " |")
    for r in sorted(rows[:-1], key=lambda r: -r["overall"])[: args.top]:
        cells = " | ".join(f"{r['per_task'][t]:.3f}" for t in tasks)
        lines.append(f"| {r['candidate']} | {r['overall']:.3f} | {r['worst_margin']:+.3f} | {cells} |")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
