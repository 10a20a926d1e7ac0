"""Calibration of candidate-set scores: collect per-candidate features, fit P(relevant), report reliability.

Three steps, the first two reading the model (run them under the heavy-CPU lock), the last one not:

    python -m benchmarks.calibrate collect     # per-candidate views of HotpotQA BM25 sets -> calibration_features.json
    python -m benchmarks.calibrate shuffles    # the same sets read in shuffled orders -> calibration_shuffles.json
    python -m benchmarks.calibrate fit         # refit on held-in rows, print the constants and held-out tables

`collect` scores, with the default config, each question's BM25 top-n (and its own 10 distractor paragraphs) as
`benchmarks.rerank` builds them and keeps every candidate's view values (`Hit.scores`), its gold label and the set
size. Questions below `benchmarks.rerank.HELD_IN` are held in (the fit sees only them); the reliability table is
measured on the held-out rest. `fit` reads only the JSON, so the shipped constants
(`shared_core.tasks.calibration`) are reproduced without a model (tests/test_calibration.py does so).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import run_metadata
from benchmarks.rerank import HELD_IN, BM25Corpus, load, metrics
from shared_core.tasks.calibration import features

logger = logging.getLogger("benchmarks.calibrate")

FEATURES = Path(__file__).parent / "results" / "calibration_features.json"
SHUFFLES = Path(__file__).parent / "results" / "calibration_shuffles.json"
UNITS = Path(__file__).parent / "results" / "calibration_units.json"
COLLECT_PLAN: tuple[tuple[str, int, int], ...] = (
    ("top5", 0, HELD_IN),
    ("top10", 0, HELD_IN),
    ("top20", 0, HELD_IN),
    ("own", 0, HELD_IN),
    ("top50", 0, 4),
    ("top10", HELD_IN, HELD_IN + 20),
    ("top20", HELD_IN, HELD_IN + 20),
    ("own", HELD_IN, HELD_IN + 20),
    ("top1", 0, HELD_IN),
    ("top2", 0, HELD_IN),
    ("top2", HELD_IN, HELD_IN + 20),
)
"""(setting, first question, end) read by `collect`: held-in sets of 5-50 candidates to fit on, held-out sets
(the rerank benchmark's top-20 and own-10 questions, plus top-2 and top-10) to report on."""
SHUFFLE_PLAN: tuple[tuple[str, int, int, tuple[int, ...]], ...] = (
    ("own", HELD_IN, HELD_IN + 4, (1, 2)),
    ("top20", HELD_IN, HELD_IN + 2, (1,)),
)
"""(setting, first question, end, `orders` values) read by `shuffles`: held-out sets, each in its given order and
`--shuffles` seeded permutations."""


def _load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _save_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _setup(data: str | None, device: str, config: str | None = None) -> tuple[Any, BM25Corpus, list[Any]]:
    """The retriever of `config` (default: the defaults; warm), the BM25 first stage and the HotpotQA questions."""
    from shared_core import AttentionRetriever, RetrieverConfig
    from shared_core.evaluation import resolve_task_path

    corpus, queries = load(Path(data) if data else resolve_task_path("hotpotqa"))
    base = RetrieverConfig.from_yaml(config) if config else RetrieverConfig()
    retriever = AttentionRetriever(base.model_copy(update={"model": base.model.model_copy(update={"device": device})}))
    retriever.warm_up()
    retriever.dense.warm_up()
    return retriever, BM25Corpus(corpus), queries


def _score(retriever: Any, question: str, paragraphs: Sequence[Any], **options: Any) -> tuple[list[Any], float]:
    """`score_candidates` over the paragraphs (id = title), read from a cold cache, and its wall time."""
    from shared_core.tasks.candidates import Candidate

    retriever.clear_cache()
    t = time.perf_counter()
    hits = retriever.score_candidates(question, [Candidate(text=p.text, id=p.title) for p in paragraphs], **options)
    return hits, time.perf_counter() - t


def collect(args: argparse.Namespace) -> int:
    """Score the planned sets and store every candidate's views and label (resumes a partial file)."""
    retriever, bm25, queries = _setup(args.data, args.device, args.config)
    out = Path(args.out)
    options = f" --config {args.config} --out {args.out}" if args.config else ""
    command = "python -m benchmarks.calibrate collect" + options
    data = _load_json(out) or {"meta": {**run_metadata(), "command": command, "config": args.config}}
    rows: list[dict[str, Any]] = data.setdefault("rows", [])
    done = {(r["setting"], r["question"]) for r in rows}
    for setting, first, end in COLLECT_PLAN:
        for qi in range(first, end):
            if (setting, qi) in done:
                continue
            query = queries[qi]
            paragraphs, _ = bm25.candidates(query, setting)
            hits, seconds = _score(retriever, query.question, paragraphs)
            views = sorted(k for k in hits[0].scores)
            rows.append(
                {
                    "question": qi,
                    "setting": setting,
                    "split": "held-in" if qi < HELD_IN else "held-out",
                    "n": len(paragraphs),
                    "n_gold": len(query.gold),
                    "relevant": [int(p.title in query.gold) for p in paragraphs],
                    "views": {k: [round(h.scores[k], 6) for h in hits] for k in views},
                    "seconds": round(seconds, 3),
                }
            )
            _save_json(out, data)
            logger.info("%s q%d: %d candidates, %.1fs", setting, qi, len(paragraphs), seconds)
    return 0


def shuffles(args: argparse.Namespace) -> int:
    """Read each planned set in its order and in seeded permutations, with orders=1 and 2; store the scores."""
    retriever, bm25, queries = _setup(args.data, args.device)
    out = Path(args.out)
    data = _load_json(out) or {"meta": {**run_metadata(), "command": "python -m benchmarks.calibrate shuffles"}}
    rows: list[dict[str, Any]] = data.setdefault("rows", [])
    done = {(r["setting"], r["question"], r["orders"], r["seed"]) for r in rows}
    for setting, first, end, readings in SHUFFLE_PLAN:
        for qi in range(first, end):
            query = queries[qi]
            paragraphs, _ = bm25.candidates(query, setting)
            for orders in readings:
                for seed in range(-1, args.shuffles):  # -1: the given order
                    if (setting, qi, orders, seed) in done:
                        continue
                    perm = list(range(len(paragraphs)))
                    if seed >= 0:
                        perm = [int(i) for i in np.random.default_rng([seed, qi]).permutation(len(paragraphs))]
                    hits, seconds = _score(retriever, query.question, [paragraphs[i] for i in perm], orders=orders)
                    back = {p: k for k, p in enumerate(perm)}  # input position -> position read
                    rows.append(
                        {
                            "question": qi,
                            "setting": setting,
                            "orders": orders,
                            "seed": seed,
                            "n": len(paragraphs),
                            "fused": [round(hits[back[i]].scores["fused"], 6) for i in range(len(paragraphs))],
                            "seconds": round(seconds, 3),
                        }
                    )
                    _save_json(out, data)
                    logger.info("%s q%d orders=%d seed=%d: %.1fs", setting, qi, orders, seed, seconds)
    return 0


def gold_spans(title: str, sentences: Sequence[str], gold: set[int]) -> list[tuple[int, int]]:
    """Char spans, in the paragraph text `benchmarks.rerank.load` builds, of the sentences numbered in `gold`."""
    joined = "".join(sentences)
    cursor = len(title.strip()) + 1 - (len(joined) - len(joined.lstrip()))
    spans = []
    for k, sentence in enumerate(sentences):
        if k in gold:
            spans.append((max(cursor, len(title.strip()) + 1), cursor + len(sentence)))
        cursor += len(sentence)
    return spans


def units(args: argparse.Namespace) -> int:
    """Sentence mode: each held-out question's own 10 paragraphs as 10 documents; every unit's score and label."""
    from shared_core import Document
    from shared_core.evaluation import resolve_task_path

    retriever, _, _ = _setup(args.data, args.device)
    raw = json.loads((Path(args.data) if args.data else resolve_task_path("hotpotqa")).read_text(encoding="utf-8"))
    out = Path(args.out)
    data = _load_json(out) or {"meta": {**run_metadata(), "command": "python -m benchmarks.calibrate units"}}
    rows: list[dict[str, Any]] = data.setdefault("rows", [])
    done = {r["question"] for r in rows}
    for qi in range(HELD_IN, HELD_IN + args.n):
        if qi in done:
            continue
        q = raw[qi]
        facts: dict[str, set[int]] = {}
        for title, k in q["supporting_facts"]:
            facts.setdefault(title, set()).add(int(k))
        docs, spans = [], []
        for title, sentences in q["context"]:
            docs.append(Document(text=f"{title.strip()}\n{''.join(sentences).strip()}", id=title))
            spans.append(gold_spans(title, sentences, facts.get(title, set())))
        retriever.clear_cache()
        t = time.perf_counter()
        per_doc = retriever.score_all(q["question"], docs)
        seconds = time.perf_counter() - t
        rows.append(
            {
                "question": qi,
                "seconds": round(seconds, 3),
                "units": [
                    {
                        "document": d,
                        "document_units": len(hits),
                        "score": round(h.score, 6),
                        "gold": int(any(_overlap(h.start, h.end, s, e) > 0.5 * (h.end - h.start) for s, e in spans[d])),
                    }
                    for d, hits in enumerate(per_doc)
                    for h in hits
                ],
            }
        )
        _save_json(out, data)
        logger.info("units q%d: %.1fs", qi, seconds)
    return 0


def _overlap(start: int, end: int, s: int, e: int) -> int:
    return min(end, e) - max(start, s)


def print_units(rows: Sequence[dict[str, Any]]) -> None:
    """Sentence mode on held-out questions: the score of supporting sentences against the others, and top-1."""
    units_ = [u for r in rows for u in r["units"]]
    gold = np.array([u["score"] for u in units_ if u["gold"]])
    other = np.array([u["score"] for u in units_ if not u["gold"]])
    top = [max(r["units"], key=lambda u: u["score"])["gold"] for r in rows]
    print(f"\nsentence mode, {len(rows)} held-out questions (own 10 paragraphs as 10 documents), {len(units_)} units")
    print("| units | count | median (IQR) | ≥ 0.5 | ≥ 0.8 |\n|---|---:|---|---:|---:|")
    for name, v in (("supporting sentences", gold), ("other sentences", other)):
        print(f"| {name} | {len(v)} | {_iqr(v)} | {np.mean(v >= 0.5):.2f} | {np.mean(v >= 0.8):.2f} |")
    print(f"top-1 unit is a supporting sentence: {np.mean(top):.2f}")


def main(argv: list[str] | None = None) -> int:
    """`collect`, `shuffles` or `fit` (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, default in (("collect", FEATURES), ("shuffles", SHUFFLES), ("units", UNITS)):
        s = sub.add_parser(name)
        s.add_argument("--data", default=None, help="HotpotQA JSON (default: the shared data's hotpotqa file)")
        s.add_argument("--device", default="auto")
        s.add_argument("--out", default=str(default))
        if name == "collect":
            s.add_argument("--config", default=None, help="retriever config YAML (a model's own calibration)")
        if name == "shuffles":
            s.add_argument("--shuffles", type=int, default=3, help="seeded permutations per set")
        if name == "units":
            s.add_argument("--n", type=int, default=20, help="held-out questions")
    f = sub.add_parser("fit")
    f.add_argument("--features", default=str(FEATURES))
    f.add_argument("--shuffle-file", default=str(SHUFFLES))
    f.add_argument("--units-file", default=str(UNITS))
    f.add_argument(
        "--fitted", action="store_true", help="report the held-out reliability of this fit, not the shipped weights"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "collect":
        return collect(args)
    if args.command == "shuffles":
        return shuffles(args)
    if args.command == "units":
        return units(args)
    return fit_report(args)


SPECS: dict[str, tuple[str, ...]] = {
    "fused": ("fused",),
    "logit(fused)": ("logit_fused",),
    "fused, ln n": ("fused", "ln_n"),
    "logit(fused), ln n": ("logit_fused", "ln_n"),
    "views": ("attention", "dense", "lexical"),
    "views, ln n": ("attention", "dense", "lexical", "ln_n"),
}
"""Feature sets compared by `fit` (Platt scaling: a logistic regression on them); the views are the [0, 1] scales."""


def candidate_table(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """One entry per candidate of `rows`: its features, label, question, setting and split, as flat arrays."""
    names = ("fused", "attention", "dense", "lexical", "n", "n_gold", "y", "q", "set", "split")
    cols: dict[str, list[Any]] = {k: [] for k in names}
    for r in rows:
        for name in ("fused", "attention", "dense", "lexical"):
            cols[name].extend(r["views"][name])
        k = len(r["relevant"])
        cols["y"].extend(r["relevant"])
        cols["n"].extend([r["n"]] * k)
        cols["n_gold"].extend([r["n_gold"]] * k)
        cols["q"].extend([r["question"]] * k)
        cols["set"].extend([r["setting"]] * k)
        cols["split"].extend([r["split"]] * k)
    out = {k: np.asarray(v) for k, v in cols.items()}
    out.update(features(out["fused"], out["n"]))
    return out


def design(table: dict[str, np.ndarray], spec: Sequence[str], mask: np.ndarray) -> np.ndarray:
    """The feature matrix of `spec` over the masked candidates, with a trailing column of ones (the intercept)."""
    cols = [table[name][mask].astype(np.float64) for name in spec]
    return np.column_stack([*cols, np.ones(int(mask.sum()))])


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-6, steps: int = 100) -> np.ndarray:
    """Maximum-likelihood logistic regression by Newton's method (a tiny ridge keeps it defined): the weights of
    `x`'s columns. Deterministic, so the shipped constants are reproduced exactly from the cached features."""
    w = np.zeros(x.shape[1])
    y = y.astype(np.float64)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) / len(y) + l2 * w
        hess = (x.T * (p * (1 - p))) @ x / len(y) + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-12:
            break
    return w


def isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators fit of y on x: the sorted x and the non-decreasing fitted value at each."""
    order = np.argsort(x, kind="stable")
    xs, ys = x[order].astype(np.float64), y[order].astype(np.float64)
    blocks: list[list[float]] = []  # [sum, count]
    for v in ys:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    fitted = np.concatenate([np.full(int(c), s / c) for s, c in blocks])
    return xs, fitted


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[list[dict[str, float]], float, float]:
    """Per equal-width probability bin: count, mean predicted, observed rate; and the ECE and Brier score."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = idx == b
        if not sel.any():
            rows.append({"low": edges[b], "high": edges[b + 1], "count": 0, "predicted": float("nan"), "observed": 0})
            continue
        pred, obs = float(p[sel].mean()), float(y[sel].mean())
        ece += sel.sum() / len(p) * abs(pred - obs)
        count = int(sel.sum())
        rows.append({"low": edges[b], "high": edges[b + 1], "count": count, "predicted": pred, "observed": obs})
    return rows, float(ece), float(np.mean((p - y) ** 2))


def ndcg_by_setting(table: dict[str, np.ndarray], scores: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Mean nDCG@10 of `scores` per setting over the masked questions (the rerank benchmark's metric)."""
    out: dict[str, list[float]] = {}
    for setting, q in dict.fromkeys(zip(table["set"][mask], table["q"][mask], strict=True)):
        sel = mask & (table["set"] == setting) & (table["q"] == q)
        gold = int(table["n_gold"][sel][0])
        relevant = list(table["y"][sel].astype(bool))
        out.setdefault(str(setting), []).append(metrics(scores[sel], relevant, gold)["ndcg@10"])
    return {k: float(np.mean(v)) for k, v in out.items()}


def fit_shipped(features: dict[str, Any]) -> np.ndarray:
    """The shipped calibration's weights refitted from the cached features (held-in rows only)."""
    from shared_core.tasks.calibration import FEATURES as SHIPPED_SPEC

    table = candidate_table(features["rows"])
    held_in = table["split"] == "held-in"
    return fit_logistic(design(table, SHIPPED_SPEC, held_in), table["y"][held_in])


def fit_report(args: argparse.Namespace) -> int:
    """Refit every feature set on the held-in rows; print the constants, the comparison and the held-out tables."""
    from shared_core.tasks.calibration import FEATURES as SHIPPED_SPEC
    from shared_core.tasks.calibration import probability

    features = _load_json(Path(args.features))
    table = candidate_table(features["rows"])
    held_in, held_out = table["split"] == "held-in", table["split"] == "held-out"
    y_in, y_out = table["y"][held_in], table["y"][held_out].astype(np.float64)
    w = fit_shipped(features)
    print(f"held-in: {int(held_in.sum())} candidates ({int(y_in.sum())} gold); held-out: {int(held_out.sum())}")
    print(f"shipped features {SHIPPED_SPEC}: weights {', '.join(repr(float(v)) for v in w)}  (last = intercept)")
    print("\n| calibration (fitted held in) | log-loss | Brier | ECE | nDCG@10 top10 / top20 / own |")
    print("|---|---:|---:|---:|---|")
    fused_ndcg = ndcg_by_setting(table, table["fused"], held_out)
    print(f"| none (fused score) | | | | {_cells(fused_ndcg)} |")
    for name, spec in SPECS.items():
        weights = fit_logistic(design(table, spec, held_in), y_in)
        p = 1.0 / (1.0 + np.exp(-(design(table, spec, held_out) @ weights)))
        _row(name, p, y_out, ndcg_by_setting(table, _all(table, spec, weights), held_out))
    xs, fitted = isotonic(table["fused"][held_in], y_in)
    iso = np.interp(table["fused"], xs, fitted)
    _row("isotonic(fused)", iso[held_out], y_out, ndcg_by_setting(table, iso, held_out))

    used = tuple(float(v) for v in w) if args.fitted else None  # None: the shipped default calibration
    shipped = np.asarray(probability(table["fused"][held_out], table["n"][held_out], used))
    rows, ece, brier = reliability(shipped, y_out)
    print(f"\nshipped, held out: ECE {ece:.3f}, Brier {brier:.3f}, base rate {y_out.mean():.3f}")
    print("| predicted | candidates | mean predicted | observed relevant |\n|---|---:|---:|---:|")
    for r in rows:
        pred = "" if r["count"] == 0 else f"{r['predicted']:.3f}"
        obs = "" if r["count"] == 0 else f"{r['observed']:.3f}"
        print(f"| {r['low']:.1f}–{r['high']:.1f} | {r['count']} | {pred} | {obs} |")
    print("\n| held out | gold: median (IQR) | others: median (IQR) | gold ≥ 0.5 | others ≥ 0.5 | ECE |")
    print("|---|---|---|---:|---:|---:|")
    for setting in ("top2", "top10", "top20", "own"):
        sel = table["set"][held_out] == setting
        if not sel.any():
            continue
        gold, other = shipped[sel & (y_out == 1)], shipped[sel & (y_out == 0)]
        _, ece_set, _ = reliability(shipped[sel], y_out[sel])
        share = f"{np.mean(gold >= 0.5):.2f} | {np.mean(other >= 0.5):.2f}"
        print(f"| {setting} | {_iqr(gold)} | {_iqr(other)} | {share} | {ece_set:.3f} |")
    shuffle_data = _load_json(Path(args.shuffle_file))
    if shuffle_data.get("rows"):
        print_shuffles(shuffle_data["rows"])
    units_data = _load_json(Path(args.units_file))
    if units_data.get("rows"):
        print_units(units_data["rows"])
    return 0


def _all(table: dict[str, np.ndarray], spec: Sequence[str], weights: np.ndarray) -> np.ndarray:
    mask = np.ones(len(table["y"]), dtype=bool)
    return np.asarray(design(table, spec, mask) @ weights)


def _row(name: str, p: np.ndarray, y: np.ndarray, ndcg: dict[str, float]) -> None:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    _, ece, brier = reliability(p, y)
    print(f"| {name} | {loss:.3f} | {brier:.4f} | {ece:.3f} | {_cells(ndcg)} |")


def _cells(ndcg: dict[str, float]) -> str:
    return " / ".join(f"{ndcg[s]:.3f}" if s in ndcg else "-" for s in ("top10", "top20", "own"))


def _iqr(values: np.ndarray) -> str:
    if not len(values):
        return "-"
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return f"{q2:.2f} ({q1:.2f}–{q3:.2f})"


def print_shuffles(rows: Sequence[dict[str, Any]]) -> None:
    """Per setting and `orders`: max and mean |Δ| of the fused and the calibrated score between the given order and
    each shuffle, and the time per query."""
    from shared_core.tasks.calibration import probability

    print("\n| set | orders | shuffles | max / mean |Δ fused| | max / mean |Δ score| | s/query |")
    print("|---|---:|---:|---|---|---:|")
    for setting in dict.fromkeys(r["setting"] for r in rows):
        for orders in (1, 2):
            part = [r for r in rows if r["setting"] == setting and r["orders"] == orders]
            base = {r["question"]: r for r in part if r["seed"] == -1}
            d_fused, d_prob = [], []
            for r in part:
                if r["seed"] < 0 or r["question"] not in base:
                    continue
                a, b = np.asarray(base[r["question"]]["fused"]), np.asarray(r["fused"])
                d_fused.extend(np.abs(a - b))
                d_prob.extend(np.abs(np.asarray(probability(a, r["n"])) - np.asarray(probability(b, r["n"]))))
            if not d_fused:
                continue
            seconds = float(np.mean([r["seconds"] for r in part]))
            print(
                f"| {setting} | {orders} | {len(part) - len(base)} | {max(d_fused):.3f} / {np.mean(d_fused):.3f} | "
                f"{max(d_prob):.3f} / {np.mean(d_prob):.3f} | {seconds:.1f} |"
            )


if __name__ == "__main__":
    raise SystemExit(main())
