"""Heads trained on candidate sets (issue 28's reranking lever): every head's per-candidate attention, then weights.

    flock /tmp/attnret-heavy.lock python -m benchmarks.candidate_heads capture --config M --out F.npz   # the model
    python -m benchmarks.candidate_heads train F.npz [G.npz ...]                                      # no model

The reranking gap of the default is its attention view (HotpotQA BM25 top 20, held out: 0.848 alone against
MiniLM's 0.857), and its heads were chosen and weighted on sentences of single documents. Here the features are what
`tasks.candidates.score_candidates` reads, per candidate set: the candidates in the product's canonical prompt order
and windows, every head of layers 0..``--max-layer`` read by the engine (calibrated query rows), pooled per candidate
into multiples of a uniform share with the product's recency correction (`attention_multiples`' rule, per head). The
dense cosine and the lexical share of the same set are stored beside them, so the product's fused score is rebuilt
exactly (tests/test_candidate_heads.py checks both against `score_candidates`). Candidate sets: HotpotQA BM25 top 20
and each question's own 10 paragraphs (questions 0-19 held in, 20-39 held out, as `benchmarks.rerank`), and with
``--chunks covidqa,qmsum`` sibling chunks of one real document (its sentences grouped into ~120-word chunks, the
in-document BM25 top 20 for the question, with source and offset; held-in and held-out documents as the real sets).
The capture saves every 20 sets and resumes from its output file.

``train`` selects and weights heads (`shared_core.training.weights`, seed 003's objectives) on held-in sets only:
5-fold cross-validation by question (by document for chunk sets) compares the rows and chooses each row's fusion
weights (`GRID`); each row is then fitted on every held-in set (split by question for early stopping) and measured on
the held-out sets, which choose nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import command_line, run_metadata
from benchmarks.rerank import HELD_IN, BM25Corpus, load, metrics

logger = logging.getLogger("benchmarks.candidate_heads")

SETTINGS = ("top20", "own")


def capture(args: argparse.Namespace) -> int:
    """Read every question's candidate sets once with every head of the band; write the features."""
    from shared_core.document import Document
    from shared_core.evaluation import load_real, resolve_task_path
    from shared_core.tasks.candidates import (
        POSITION_BIAS,
        WINDOW_TOKENS,
        Candidate,
        plan_reading,
        window_multiples,
        windows,
    )
    from shared_core.training.head_features import band_selection
    from shared_core.training.head_training import capture_retriever

    retriever = capture_retriever(args.config, args.max_layer)
    retriever.dense.warm_up()
    shape = retriever.model.shape
    selection = band_selection(shape.num_layers, shape.num_heads, args.max_layer)
    out = Path(args.out)
    arrays: dict[str, np.ndarray] = {}
    index: list[dict[str, Any]] = []
    if out.is_file():  # resume: the sets already read are kept, not read again
        with np.load(out) as data:
            index = json.loads(str(data["index"]))
            arrays = {f"{e['key']}_x": data[f"{e['key']}_x"] for e in index}
        logger.info("resuming %s: %d sets already read", out, len(index))
    done = {e["key"] for e in index}
    start = time.perf_counter()

    def save() -> None:
        meta = run_metadata() | {
            "command": command_line("benchmarks.candidate_heads", sys.argv[1:]),
            "config": args.config,
            "max_layer": args.max_layer,
            "num_heads": shape.num_heads,
            "seconds_this_run": round(time.perf_counter() - start, 1),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, meta=json.dumps(meta), index=json.dumps(index), **arrays)  # type: ignore[arg-type]
        tmp.replace(out)

    def read(key: str, query: str, candidates: list[Candidate], relevant: list[bool], **info: Any) -> None:
        """Every head's multiples of one candidate set, read as `score_candidates` reads it, with its views."""
        if key in done:
            return
        texts = [c.text for c in candidates]
        if len(set(texts)) != len(texts):
            raise ValueError(f"{key}: repeated candidate texts")
        plan = plan_reading(retriever, query, candidates, dense=True, window_tokens=WINDOW_TOKENS)
        x = np.zeros((len(selection.layers) * shape.num_heads, len(texts)))
        retriever.clear_cache()
        for part in windows(plan.order, plan.lengths, plan.budget, texts):
            tokens, per_layer = retriever.head_token_scores(query, Document(text=part.text), selection)
            rows = np.concatenate([per_layer[layer].double().cpu().numpy() for layer in sorted(per_layer)])
            x[:, list(part.members)] = window_multiples(tokens, rows, part, "mean", POSITION_BIAS)
        arrays[f"{key}_x"] = x.astype(np.float32)
        index.append(
            {
                "key": key,
                **info,
                "relevant": [int(r) for r in relevant],
                "dense_raw": plan.cosine.tolist() if plan.cosine is not None else [],
                "lexical_raw": plan.bm25.tolist(),
                "lexical_share": plan.share.tolist(),
            }
        )
        logger.info("%s: %d candidates, %.0f s so far", key, len(texts), time.perf_counter() - start)
        if len(index) % 20 == 0:
            save()

    if args.hotpot:
        corpus, queries = load(resolve_task_path("hotpotqa"))
        bm25 = BM25Corpus(corpus)
        for qi in range(args.first, args.first + args.n):
            query = queries[qi]
            split = "held-in" if qi < HELD_IN else "held-out"
            for setting in SETTINGS:
                paragraphs, _ = bm25.candidates(query, setting)
                cands = [Candidate(text=p.text) for p in paragraphs]
                relevant = [p.title in query.gold for p in paragraphs]
                info = {"question": qi, "setting": setting, "split": split, "n_gold": len(query.gold)}
                read(f"q{qi}_{setting}", query.question, cands, relevant, **info)
    for name in args.chunks.split(",") if args.chunks else []:
        for split, docs in (("held-in", None), ("held-out", args.chunk_out_docs)):
            examples = load_real(name, split=split, n_documents=docs, per_document=args.per_document)
            for i, ex in enumerate(examples):
                cands, relevant = chunk_candidates(ex, retriever, args.chunk_words, args.chunk_top)
                if not any(relevant):
                    continue
                info = {"question": f"{name}:{ex.document_id}", "setting": name, "split": split}
                read(f"{name}{i}_{split}", ex.query, cands, relevant, **info, n_gold=int(sum(relevant)))
    save()
    logger.info("wrote %s", out)
    return 0


def chunk_candidates(ex: Any, retriever: Any, words: int, top: int) -> tuple[list[Any], list[bool]]:
    """Sibling chunks of one real document as a candidate set: the document's sentences (the retriever's units)
    grouped into chunks of about `words` words, the BM25 top `top` of them for the question (each with its source
    and offset, as a pipeline's chunks carry them), and which of them overlap a gold span."""
    import bm25s

    from shared_core.tasks.candidates import Candidate

    text = ex.documents[0]
    chunks: list[tuple[int, int]] = []
    lo = hi = count = 0
    for unit in retriever.units(text):
        if count and count + len(text[unit.start : unit.end].split()) > words:
            chunks.append((lo, hi))
            count = 0
        if not count:
            lo = unit.start
        hi, count = unit.end, count + len(text[unit.start : unit.end].split())
    if count:
        chunks.append((lo, hi))
    texts = [text[a:b] for a, b in chunks]
    index = bm25s.BM25()
    index.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    tokens = bm25s.tokenize([ex.query], stopwords="en", return_ids=False, show_progress=False)[0]
    known = [t for t in tokens if t in index.vocab_dict]
    scores = np.asarray(index.get_scores(known)) if known else np.zeros(len(texts))
    first: dict[str, int] = {}  # a repeated chunk text is one candidate (the product reads a text once)
    ranked = [first.setdefault(texts[i], int(i)) for i in np.argsort(-scores, kind="stable")]
    picked = sorted(list(dict.fromkeys(ranked))[:top])
    gold = [(g.start, g.end) for g in ex.gold if g.document_index == 0]
    cands = [Candidate(text=texts[i], source=ex.document_id, start=chunks[i][0]) for i in picked]
    relevant = [any(a < chunks[i][1] and chunks[i][0] < b for a, b in gold) for i in picked]
    return cands, relevant


# ----------------------------------------------------------------------------------------------- training


def read_features(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The capture's metadata and one record per (question, setting), each with its ``x[head, candidate]``."""
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        index = json.loads(str(data["index"]))
        for e in index:
            e["x"] = data[f"{e['key']}_x"].astype(np.float64)
            e["relevant"] = np.asarray(e["relevant"], dtype=bool)
    return meta, index


def as_examples(records: Sequence[dict[str, Any]]) -> list[Any]:
    """Training examples (`ExampleFeatures`) of the records with a gold candidate; a question is one group, so its
    sets never sit on both sides of a split."""
    from shared_core.training.head_features import ExampleFeatures

    return [
        ExampleFeatures(r["key"], f"q{r['question']}", r["x"], r["relevant"]) for r in records if r["relevant"].any()
    ]


class Fuser:
    """The product's candidate fusion (`ViewScales`, weighted mean) of a record's views, the attention rebuilt from
    head weights."""

    def __init__(self, weights: dict[str, float], scale: float = 2.0) -> None:
        from shared_core.tasks.candidates import ViewScales

        self.weights, self.scales = weights, ViewScales(attention_scale=scale)

    def attention(self, record: dict[str, Any], heads: Sequence[int], w: np.ndarray) -> np.ndarray:
        """The attention view's multiples: the weighted mean of the heads' rows (weights summing to 1)."""
        return np.asarray(w, dtype=np.float64) @ record["x"][list(heads)] / float(np.sum(w))

    def fused(self, record: dict[str, Any], heads: Sequence[int], w: np.ndarray) -> np.ndarray:
        from shared_core.tasks.candidates import fuse_scaled

        views = {
            "attention": self.scales.attention(self.attention(record, heads, w)),
            "dense": self.scales.dense(np.asarray(record["dense_raw"])),
            "lexical": self.scales.lexical(np.asarray(record["lexical_share"])),
        }
        return fuse_scaled(views, self.weights)

    def ndcg(self, records: Sequence[dict[str, Any]], heads: Sequence[int], w: np.ndarray) -> dict[str, float]:
        """Mean nDCG@10 per setting of the attention view alone and of the fused score (rerank's metric)."""
        out: dict[str, float] = {}
        for setting in dict.fromkeys(r["setting"] for r in records):
            part = [r for r in records if r["setting"] == setting]
            for name, fn in (("attention", self.attention), ("fused", self.fused)):
                values = [metrics(fn(r, heads, w), r["relevant"].tolist(), r["n_gold"])["ndcg@10"] for r in part]
                out[f"{setting} {name}"] = float(np.mean(values))
        return out


Method = Any  # (train records) -> (heads, weights)


def methods(shipped: tuple[list[int], np.ndarray], n_rows: int, seed: int) -> dict[str, Method]:
    """Every row: how it picks heads and weights from the training records (held-in questions only)."""
    from shared_core.training.objectives import OBJECTIVES
    from shared_core.training.weights import TrainSettings, fit_weights, head_ndcg, split_by_document

    def fixed(heads: list[int], w: np.ndarray) -> Method:
        return lambda records: (heads, w)

    def detected(top: int) -> Method:
        def pick(records: Sequence[dict[str, Any]]) -> tuple[list[int], np.ndarray]:
            order = np.argsort(-head_ndcg(as_examples(records), 10), kind="stable")[:top]
            return [int(i) for i in order], np.full(top, 1.0 / top)

        return pick

    def trained(objective: str, top: int | None) -> Method:
        def pick(records: Sequence[dict[str, Any]]) -> tuple[list[int], np.ndarray]:
            settings = TrainSettings(objective=objective, seed=seed)  # type: ignore[arg-type]
            train, validation = split_by_document(as_examples(records), settings.validation, seed)
            if top is None:
                heads = shipped[0]
            else:
                heads = [int(i) for i in np.argsort(-head_ndcg(train, 10), kind="stable")[:top]]
            fit = fit_weights(train, validation, heads, settings)
            return fit.heads, fit.weights

        return pick

    rows: dict[str, Method] = {
        "shipped head set (its weights)": fixed(*shipped),
        "shipped heads, equal weights": fixed(shipped[0], np.full(len(shipped[0]), 1.0 / len(shipped[0]))),
        "all heads of the band averaged": fixed(list(range(n_rows)), np.full(n_rows, 1.0 / n_rows)),
    }
    for top in (4, 8, 16):
        rows[f"detected top {top} on candidate sets (equal weights)"] = detected(top)
    for objective in OBJECTIVES:
        rows[f"shipped heads, {objective} weights on candidate sets"] = trained(objective, None)
        for top in (8, 16):
            rows[f"{objective}, detected top {top} on candidate sets"] = trained(objective, top)
    return rows


def cross_validate(
    records: Sequence[dict[str, Any]],
    method: Method,
    fusers: Sequence[Fuser],
    folds: int,
    seed: int,
    data: set[str] | None = None,
) -> list[dict[str, float]]:
    """Per fuser, the mean per-setting nDCG@10 over `folds` folds of the questions (or documents, for chunk sets):
    each fold's records scored by the heads and weights the method picks from the other folds' records of the
    settings in `data` (None: all)."""
    questions = sorted({str(r["question"]) for r in records})
    order = np.random.default_rng(seed).permutation(questions)
    picks = []
    for k in range(folds):
        test = set(order[k::folds].tolist())
        train = [r for r in records if str(r["question"]) not in test and (data is None or r["setting"] in data)]
        picks.append((test, method(train)))
    out = []
    for fuser in fusers:
        total: dict[str, float] = {}
        for test, (heads, w) in picks:
            part = [r for r in records if str(r["question"]) in test]
            for name, value in fuser.ndcg(part, heads, w).items():
                n = sum(r["setting"] == name.split()[0] for r in part)
                total[name] = total.get(name, 0.0) + value * n
        out.append({name: v / sum(r["setting"] == name.split()[0] for r in records) for name, v in total.items()})
    return out


GRID = [
    {"attention": a, "dense": d, "lexical": lx}
    for a in (0.5, 1.0, 2.0, 4.0, 8.0)
    for d in (0.0, 0.5, 1.0)
    for lx in (0.5, 1.0, 2.0)
]
"""Candidate fusion weights tried per row (the shipped 1 / 0.5 / 2 among them), chosen on held-in CV."""


def train(args: argparse.Namespace) -> int:
    """Every row: 5-fold CV on held-in questions, then fitted on all of them and measured held out."""
    from shared_core.config import RetrieverConfig
    from shared_core.engine.heads import load_head_file
    from shared_core.views.model_fusion import model_fusion

    meta, records = read_features(args.features[0])
    for path in args.features[1:]:
        records += read_features(path)[1]
    num_heads = int(meta["num_heads"])
    n_rows = records[0]["x"].shape[0]
    head_file = load_head_file(args.heads)
    names = [f"{layer}-{h}" for layer in range(n_rows // num_heads) for h in range(num_heads)]
    at = {n: i for i, n in enumerate(names)}
    weights = head_file.get("weights") or dict.fromkeys(head_file["heads"], 1.0)
    shipped = ([at[str(h)] for h in weights], np.array([float(v) for v in weights.values()]))
    fusion = model_fusion(RetrieverConfig.from_yaml(Path(meta["config"]))).candidates.view_weights
    fusers = [Fuser(fusion, args.scale)] + [Fuser(g, args.scale) for g in GRID]
    held_in = [r for r in records if r["split"] == "held-in"]
    held_out = [r for r in records if r["split"] == "held-out"]
    data_options = {"all": None, "hotpot": {"top20", "own"}}
    rows = []
    for label, method in methods(shipped, n_rows, args.seed).items():
        for data in args.data.split(","):
            if " on candidate sets" not in label and data != args.data.split(",")[0]:
                continue  # a fixed head set does not depend on the training data
            t = time.perf_counter()
            on = data_options[data]
            cv = cross_validate(held_in, method, fusers, args.folds, args.seed, on)
            heads, w = method([r for r in held_in if on is None or r["setting"] in on])
            best = max(range(1, len(fusers)), key=lambda i: _fused_mean(cv[i]))  # ties: the first in the grid
            kept = {names[h]: round(float(v), 4) for h, v in zip(heads, w, strict=True) if v > 0}
            name = label.replace("on candidate sets", f"on {data} candidate sets")
            rows.append(
                {
                    "row": name,
                    "cv": cv[0],
                    "held_out": fusers[0].ndcg(held_out, heads, w),
                    "tuned_weights": fusers[best].weights,
                    "cv_tuned": cv[best],
                    "held_out_tuned": fusers[best].ndcg(held_out, heads, w),
                    "heads": kept,
                    "seconds": time.perf_counter() - t,
                }
            )
            r = rows[-1]
            logger.info("%-55s cv %s | out %s", name, _fmt(r["cv"]), _fmt(r["held_out"]))
            logger.info(
                "%-55s tuned %s cv %s | out %s", "", r["tuned_weights"], _fmt(r["cv_tuned"]), _fmt(r["held_out_tuned"])
            )
    baselines = {split: baseline_ndcg(part) for split, part in (("held-in", held_in), ("held-out", held_out))}
    chosen = max(rows, key=lambda r: _fused_mean(r["cv_tuned"]))  # ties: the first row (the shipped set)
    decision = (
        f"best on held-in CV (mean fused nDCG@10 over the settings, tuned weights): {chosen['row']} "
        f"({_fused_mean(chosen['cv_tuned']):.4f}, weights {chosen['tuned_weights']}) against the shipped set's "
        f"{_fused_mean(rows[0]['cv']):.4f} with its own weights; held out: {_fmt(chosen['held_out_tuned'])}"
    )
    payload = {
        "meta": run_metadata() | {"command": command_line("benchmarks.candidate_heads", sys.argv[1:])},
        "decision": decision,
        "baselines": baselines,
        "capture": meta,
        "fusion": fusion,
        "attention_scale": args.scale,
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    sys.stdout.write(table(rows) + "\n\nBaselines (nDCG@10): " + json.dumps(baselines) + "\n" + decision + "\n")
    return 0


def baseline_ndcg(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per setting, the mean nDCG@10 of BM25 over the set and of the MiniLM cosine (the views stored beside)."""
    out: dict[str, dict[str, float]] = {}
    for setting in dict.fromkeys(r["setting"] for r in records):
        part = [r for r in records if r["setting"] == setting]
        out[setting] = {
            name: round(
                float(np.mean([metrics(r[key], r["relevant"].tolist(), r["n_gold"])["ndcg@10"] for r in part])), 4
            )
            for name, key in (("bm25", "lexical_raw"), ("dense", "dense_raw"))
        } | {"n": len(part)}
    return out


def _fused_mean(scores: dict[str, float]) -> float:
    return float(np.mean([v for k, v in scores.items() if k.endswith("fused")]))


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _fmt(d: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in d.items())


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: held-in cross-validated, then held-out nDCG@10 per setting: the attention view alone, fused with the
    shipped candidate weights, and fused with the weights chosen per row on held-in CV (`GRID`)."""
    settings = list(dict.fromkeys(c.split()[0] for c in rows[0]["cv"]))
    out = []
    for title, plain, tuned in (("held-in, 5-fold CV", "cv", "cv_tuned"), ("held out", "held_out", "held_out_tuned")):
        out += [
            f"\n**{title}** (per setting: attention alone / fused, shipped weights / fused, tuned weights)\n",
            "| row | heads | " + " | ".join(settings) + " | mean fused, tuned | tuned weights (a/d/l) |",
            "|---|---:|" + "---|" * len(settings) + "---:|---|",
        ]
        for r in rows:
            cells = [
                " / ".join(_cell(r[part].get(f"{s} {view}")) for part, view in got)
                for s in settings
                for got in [((plain, "attention"), (plain, "fused"), (tuned, "fused"))]
            ]
            w = r["tuned_weights"]
            out.append(
                f"| {r['row']} | {len(r['heads'])} | "
                + " | ".join(cells)
                + f" | {_fused_mean(r[tuned]):.3f} | {w['attention']:g}/{w['dense']:g}/{w['lexical']:g} |"
            )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("capture", help="read the candidate sets with every head of the band (the model runs)")
    c.add_argument("--config", required=True, help="retriever config YAML (the model)")
    c.add_argument("--max-layer", type=int, default=16, help="deepest layer read (default 16, the 1.5B's heads)")
    c.add_argument("--first", type=int, default=0)
    c.add_argument("--n", type=int, default=2 * HELD_IN, help="questions from --first (default 40: 0-39)")
    c.add_argument("--no-hotpot", dest="hotpot", action="store_false", help="skip the HotpotQA sets")
    c.add_argument("--chunks", default="", help="real sets read as sibling-chunk candidate sets, e.g. covidqa,qmsum")
    c.add_argument("--per-document", type=int, default=6, help="questions per real document (default 6)")
    c.add_argument("--chunk-out-docs", type=int, default=8, help="held-out documents per real set (default 8)")
    c.add_argument("--chunk-words", type=int, default=120, help="words per chunk (default 120)")
    c.add_argument("--chunk-top", type=int, default=20, help="BM25 top chunks per question (default 20)")
    c.add_argument("--out", required=True)
    t = sub.add_parser("train", help="select and weight heads on held-in questions; held-out rows (no model)")
    t.add_argument("features", nargs="+", help="captures (.npz), their records pooled")
    t.add_argument("--data", default="all,hotpot", help="training sets compared: all, hotpot (default both)")
    t.add_argument("--heads", default="shared_core/head_sets/qwen2.5-coder-1.5b-instruct.yaml", help="shipped head set")
    t.add_argument("--scale", type=float, default=2.0, help="the attention view's scale (ViewScales, default 2.0)")
    t.add_argument("--folds", type=int, default=5)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", help="results JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return capture(args) if args.command == "capture" else train(args)


if __name__ == "__main__":
    raise SystemExit(main())
