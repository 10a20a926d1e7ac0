"""Learned fusion (issue 28, part 3): the views' per-unit scores weighted by a multi-positive objective instead of the
hand-tuned grid of ``benchmarks.tune_fusion``.

    flock /tmp/attnret-heavy.lock python -m benchmarks.train_heads --capture-only     # attention features (cached)
    flock /tmp/attnret-heavy.lock python -m benchmarks.learn_fusion                   # dense + lexical, then learn

The questions are ``benchmarks.train_heads``'s (held-in: COVID-QA held-in papers and the first built questions;
held-out: other papers and later questions). Per unit: the attention view (the shipped QR heads, equal weights, read
from the cached head features: exactly the default view), the dense view (cosine to the query) and the lexical view
(BM25), each normalised per document by min-max, z-score or rank. One non-negative weight per view is fitted
(`shared_core.training.weights.fit_weights`, every objective) on the held-in train split, early-stopped on the
held-in validation split (split by document); held-out is only measured. The entity expansion is a ranking step on
top of the fused score, not a per-unit view, so it is left out of both the learned and the default rows (the default
row is ``fusion`` as shipped, without entities). ``--heads FILE`` reads the attention view through another head set
(a trained one: its heads by their weights). Results: ``benchmarks/results/training/learn_fusion_LABEL.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from benchmarks.report import command_line, run_metadata
from benchmarks.train_heads import add_set_arguments, example_sets, view_ndcg
from shared_core.config import FusionConfig
from shared_core.engine.heads import load_head_file, shipped_head_sets
from shared_core.evaluation import gold_units
from shared_core.models.loading import model_id
from shared_core.retriever import AttentionRetriever
from shared_core.training.data_options import config_of
from shared_core.training.head_features import ExampleFeatures, SourcedExample, feature_dir, feature_key, head_names
from shared_core.training.head_training import capture_retriever
from shared_core.training.objectives import OBJECTIVES
from shared_core.training.weights import TrainSettings, fit_weights, split_by_document
from shared_core.views.fusion import minmax
from shared_core.views.lexical import LexicalIndex
from shared_core.views.ranking import fuse_views

logger = logging.getLogger("benchmarks.learn_fusion")

VIEWS = ("attention", "dense", "lexical")
NORMALISATIONS = ("minmax", "zscore", "rank")


@dataclass
class Question:
    """One question's raw views per document and its gold mask over all units."""

    group: str
    task: str
    docs: list[dict[str, np.ndarray]]
    gold: np.ndarray


def normalise(scores: np.ndarray, how: str) -> np.ndarray:
    """One document's view scores normalised: min-max to [0, 1], z-score, or rank (1 = best, 0 = worst)."""
    if how == "minmax":
        return minmax(scores)
    if how == "zscore":
        std = scores.std()
        return (scores - scores.mean()) / std if std > 0 else np.zeros_like(scores)
    order = np.argsort(np.argsort(-scores, kind="stable"), kind="stable")
    return 1.0 - order / max(len(scores) - 1, 1)


def collect(
    retriever: AttentionRetriever,
    items: Sequence[SourcedExample],
    deepest: int,
    heads: tuple[list[int], np.ndarray],
    cache: Path,
) -> list[Question]:
    """Every question's three raw views per document (dense and lexical cached beside the head features); the
    attention view is the head set's weighted mean (`heads`: feature rows and their weights)."""
    out = []
    seen: dict[str, tuple[Any, np.ndarray]] = {}
    for item in tqdm(items, desc="views", disable=None):
        ex = item.example
        key = feature_key(retriever, ex, deepest)
        with np.load(cache / f"{key}.npz") as data:
            x = data["x"]
        attention = np.average(x[heads[0]].astype(np.float64), axis=0, weights=heads[1])
        side = cache / "views" / f"{key}.npz"
        if side.is_file():
            with np.load(side) as data:
                dense, lexical, gold = data["dense"], data["lexical"], data["gold"]
        else:
            dense_parts, lexical_parts, gold_parts = [], [], []
            for d, text in enumerate(ex.documents):
                if text not in seen:  # several questions share a paper: segment and embed it once
                    found = retriever.units(text)
                    seen[text] = (found, retriever.dense.embed([u.text for u in found]))
                units, embedded = seen[text]
                texts = [u.text for u in units]
                dense_parts.append(retriever.dense.score(ex.query, embedded))
                lexical_parts.append(LexicalIndex.build(texts, retriever.config.lexical).score(ex.query))
                g = gold_units([(u.start, u.end) for u in units], ex.gold, d)
                gold_parts.append(np.isin(np.arange(len(units)), sorted(g)))
            dense, lexical = np.concatenate(dense_parts), np.concatenate(lexical_parts)
            gold = np.concatenate(gold_parts)
            side.parent.mkdir(parents=True, exist_ok=True)
            np.savez(side, dense=dense, lexical=lexical, gold=gold, sizes=[len(p) for p in dense_parts])
        with np.load(side) as data:
            sizes = [int(s) for s in data["sizes"]]
        bounds = np.cumsum([0, *sizes])
        docs = [
            {"attention": attention[a:b], "dense": dense[a:b], "lexical": lexical[a:b]}
            for a, b in itertools.pairwise(bounds)
        ]
        out.append(Question(item.group, ex.task, docs, gold.astype(bool)))
    return out


def as_features(questions: Sequence[Question], how: str) -> list[ExampleFeatures]:
    """Per question, the three views normalised per document (rows) over all units, for `fit_weights`."""
    out = []
    for i, q in enumerate(questions):
        x = np.concatenate([np.stack([normalise(d[v], how) for v in VIEWS]) for d in q.docs], axis=1)
        out.append(ExampleFeatures(f"{q.task}-{i}", q.group, x.astype(np.float32), q.gold))
    return out


def default_scores(questions: Sequence[Question]) -> list[ExampleFeatures]:
    """The default weights' fused score of every unit as a one-row feature (``fuse_views`` per document, no entities,
    no ``fusion.context``: the weights are compared before the neighbours' share, which the product adds to either)."""
    config = FusionConfig()
    out = []
    for i, q in enumerate(questions):
        fused = np.concatenate([fuse_views(dict(d), config) for d in q.docs])
        out.append(ExampleFeatures(f"{q.task}-{i}", q.group, fused[None, :].astype(np.float32), q.gold))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Collect the views (cached), learn the fusion weights per normalisation and objective, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", default="smollm2-135m")
    p.add_argument("--band", type=int, default=18, help="deepest layer of the cached head features (default 18)")
    add_set_arguments(p)
    p.add_argument("--out", type=Path)
    p.add_argument(
        "--heads", help="head-set file of the attention view, by its weights (default: the shipped QR heads, equal)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    retriever = capture_retriever(config_of(args), args.band)
    names = head_names(retriever.model.shape.num_heads, args.band)
    head_set = load_head_file(args.heads or shipped_head_sets()[model_id(retriever.config.model)])
    weights = head_set.get("weights") or {}
    picked = [names.index(str(h)) for h in head_set["heads"]]
    heads = (picked, np.array([float(weights.get(h, 1.0)) for h in head_set["heads"]]))
    cache = feature_dir(retriever, args.cache_dir)
    sets = example_sets(args)
    questions = {
        split: {s: collect(retriever, items, args.band, heads, cache) for s, items in by_set.items()}
        for split, by_set in sets.items()
    }
    held_in = [q for qs in questions["held-in"].values() for q in qs]
    rows: list[dict[str, Any]] = []
    base = TrainSettings(seed=args.seed, validation=args.validation, l2=1e-3)

    def measure(
        label: str, feats_in: list[ExampleFeatures], held_out: dict[str, list[ExampleFeatures]], w: Any
    ) -> None:
        ids = {f.id for f in validation_of(feats_in)}
        val = [f for f in feats_in if f.id in ids]
        heads = list(range(feats_in[0].x.shape[0]))
        row = {
            "row": label,
            "weights": [round(float(v), 4) for v in w],
            "validation": view_ndcg(val, heads, np.asarray(w)),
            "held_out": {s: view_ndcg(fs, heads, np.asarray(w)) for s, fs in held_out.items()},
        }
        row["held_out_mean"] = float(np.mean(list(row["held_out"].values())))
        rows.append(row)
        logger.info("%-42s val %.3f out %.3f", label, row["validation"], row["held_out_mean"])

    def validation_of(feats: list[ExampleFeatures]) -> list[ExampleFeatures]:
        return split_by_document(feats, base.validation, base.seed)[1]

    fused_in = default_scores(held_in)
    fused_out = {s: default_scores(qs) for s, qs in questions["held-out"].items()}
    measure("shipped fusion (weighted min-max, a1/d0.5/l2)", fused_in, fused_out, [1.0])
    for how in NORMALISATIONS:
        feats = as_features(held_in, how)
        out = {s: as_features(qs, how) for s, qs in questions["held-out"].items()}
        for v, view in enumerate(VIEWS):
            if how == "minmax":
                measure(f"{view} alone", feats, out, np.eye(3)[v])
        measure(f"equal weights, {how}", feats, out, np.full(3, 1 / 3))
        train, validation = split_by_document(feats, base.validation, base.seed)
        for objective in OBJECTIVES:
            fit = fit_weights(train, validation, [0, 1, 2], replace(base, objective=objective))
            measure(f"learned {objective}, {how}", feats, out, fit.weights)
    payload = {
        "meta": run_metadata() | {"command": command_line("benchmarks.learn_fusion", argv)},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "views": list(VIEWS),
        "rows": rows,
    }
    path = args.out or Path("benchmarks/results/training") / f"learn_fusion_{args.label}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    sets_out = list(rows[0]["held_out"])
    lines = ["| row | weights (a/d/l) | validation | " + " | ".join(f"{s} out" for s in sets_out) + " | mean out |"]
    lines.append("|---|---|---:|" + "---:|" * len(sets_out) + "---:|")
    for r in rows:
        cells = " | ".join(f"{r['held_out'][s]:.3f}" for s in sets_out)
        w = "/".join(f"{x:.2f}" for x in r["weights"])
        lines.append(f"| {r['row']} | {w} | {r['validation']:.3f} | {cells} | {r['held_out_mean']:.3f} |")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
