"""Canonical prompt orders for candidate sets (issue #29): held-in nDCG@10 of each order against the given order.

`score_candidates` reads a query's candidates in one prompt; the order of the sources in it decides where the
model's recency bias falls. A canonical order (a function of the query and the set of texts alone) makes a shuffled
input score the same. Each variant swaps `candidates.order_relevance` (the per-text key the sources are sorted by,
ascending: the highest nearest the query) and scores HotpotQA held-in questions (below `benchmarks.rerank.HELD_IN`)
through `benchmarks.calibrate`'s reader; "given" is the order before, the sources in reverse input order.

    flock /tmp/attnret-heavy.lock python -m benchmarks.prompt_orders run --variants given,rrf --questions 0-10
    python -m benchmarks.prompt_orders table
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import run_metadata
from benchmarks.rerank import HELD_IN, metrics
from shared_core.tasks import candidates as cand

logger = logging.getLogger("benchmarks.prompt_orders")

RESULTS = Path(__file__).parent / "results" / "prompt_orders.json"
SETTINGS = ("top20", "own")


def given_order(candidates: Sequence[cand.Candidate], relevance: Any = None) -> list[int]:
    """The order before issue #29: each source's candidates by start, the sources in reverse order of appearance."""
    groups: dict[object, list[int]] = {}
    for i, c in enumerate(candidates):
        groups.setdefault(("source", c.source) if c.source is not None else ("alone", i), []).append(i)
    order: list[int] = []
    for members in reversed(groups.values()):
        order.extend(sorted(members, key=lambda i: (candidates[i].start is None, candidates[i].start or 0, i)))
    return order


Key = Callable[..., np.ndarray]


def _dense(lexical: np.ndarray, cosine: np.ndarray | None) -> np.ndarray:
    return np.asarray(cosine if cosine is not None else lexical, dtype=np.float64)


def _bm25(lexical: np.ndarray, cosine: np.ndarray | None) -> np.ndarray:
    return np.asarray(lexical, dtype=np.float64)


def _prior(lexical: np.ndarray, cosine: np.ndarray | None) -> np.ndarray:
    """The order-free views weighted as in the default `fusion.weights` (lexical 2, dense 0.5) on their scales."""
    dense = np.clip(cosine, 0.0, 1.0) if cosine is not None else 0.0
    return np.asarray(2.0 * np.clip(lexical, 0.0, 1.0) + 0.5 * dense, dtype=np.float64)


VARIANTS: dict[str, tuple[Callable[..., list[int]], Key]] = {
    "given": (given_order, cand.order_relevance),
    "dense": (cand.prompt_order, _dense),
    "bm25": (cand.prompt_order, _bm25),
    "rrf": (cand.prompt_order, cand.order_relevance),
    "prior": (cand.prompt_order, _prior),
}
"""name -> (the `prompt_order` used, the `order_relevance` key it sorts by); "rrf" is what ships."""


def run(args: argparse.Namespace) -> int:
    """Score the held-in questions with each variant; rows appended to the results file (resumes)."""
    import benchmarks.calibrate as calibrate

    lo, hi = (int(x) for x in args.questions.split("-"))
    if hi > HELD_IN:
        raise SystemExit(f"held-in questions only (below {HELD_IN}); the order is chosen on them")
    retriever, bm25, queries = calibrate._setup(args.data, args.device)
    out = Path(args.out)
    data: dict[str, Any] = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {"meta": run_metadata()}
    data.setdefault("rows", [])
    done = {(r["variant"], r["setting"], r["question"]) for r in data["rows"]}
    shipped = (cand.prompt_order, cand.order_relevance)
    try:
        for name in args.variants.split(","):
            cand.prompt_order, cand.order_relevance = VARIANTS[name]
            for setting in SETTINGS:
                for qi in range(lo, hi):
                    if (name, setting, qi) in done:
                        continue
                    query = queries[qi]
                    paragraphs, _ = bm25.candidates(query, setting)
                    hits, seconds = calibrate._score(retriever, query.question, paragraphs)
                    relevant = [p.title in query.gold for p in paragraphs]
                    ndcg = {
                        view: metrics(np.array([h.scores[key] for h in hits]), relevant, len(query.gold))["ndcg@10"]
                        for view, key in (("fused", "fused"), ("attention", "attention_raw"))
                    }
                    data["rows"].append(
                        {"variant": name, "setting": setting, "question": qi, "seconds": round(seconds, 3), **ndcg}
                    )
                    out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
                    logger.info("%s %s q%d: fused %.3f, %.1fs", name, setting, qi, ndcg["fused"], seconds)
    finally:
        cand.prompt_order, cand.order_relevance = shipped
    return 0


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: per variant, mean nDCG@10 (fused / attention alone) per setting and half of the held-in questions."""
    blocks = [(setting, lo, lo + 10) for lo in (0, 10) for setting in SETTINGS]
    head = " | ".join(f"{s} q{lo}–{hi - 1}" for s, lo, hi in blocks)
    lines = [f"| variant | {head} | mean fused | s/query |", "|---|" + "---|" * len(blocks) + "---:|---:|"]
    for name in dict.fromkeys(r["variant"] for r in rows):
        cells = []
        for setting, lo, hi in blocks:
            part = [r for r in rows if r["variant"] == name and r["setting"] == setting and lo <= r["question"] < hi]
            fused, att = (np.mean([r[k] for r in part]) for k in ("fused", "attention")) if part else (0.0, 0.0)
            cells.append(f"{fused:.3f} / {att:.3f}" if part else "")
        mine = [r for r in rows if r["variant"] == name]
        fused = float(np.mean([r["fused"] for r in mine]))
        seconds = float(np.mean([r["seconds"] for r in mine]))
        lines.append(f"| {name} | {' | '.join(cells)} | {fused:.3f} ({len(mine)} sets) | {seconds:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`run` or `table` (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {sorted(VARIANTS)}")
    r.add_argument("--questions", default="0-10", help="held-in question range lo-hi (hi exclusive, ≤ 20)")
    r.add_argument("--data", default=None, help="HotpotQA JSON (default: the shared data's hotpotqa file)")
    r.add_argument("--device", default="auto")
    r.add_argument("--out", default=str(RESULTS))
    t = sub.add_parser("table")
    t.add_argument("--results", default=str(RESULTS))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "run":
        return run(args)
    print(table(json.loads(Path(args.results).read_text(encoding="utf-8"))["rows"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
