"""Levers that change the attention view itself (issue 16): which heads and layers are read, how token scores are
pooled over a unit, and a second attention pass with the first ranking's top hits appended to the query.

    python -m benchmarks.attention_levers --split held-in --head-set benchmarks/results/heads_smollm2_mix.yaml
    python -m benchmarks.attention_levers --split held-out --offset 50 --real-max-words qmsum=4000 \\
        --head-set benchmarks/results/heads_smollm2_mix.yaml --append
    python -m benchmarks.attention_levers --split held-in --model /path/to/gemma-3-270m.gguf --label gemma3-270m \\
        --append

Every question is read twice by the model: once by the shipped default configuration (its attention, dense and
lexical views, its ``fused+entities`` ranking, and the BM25 and dense baselines on the same units) and once with
every head of every layer captured (calibrated per-head token scores, ``[layers x heads, tokens]``). Each lever's
attention view is then computed from the captured heads by the retriever's own rules (head mean, ``x`` tokens for a
uniform share, ``scoring.pool``) and fused with the default's dense and lexical views by the default fusion and entity
expansion (``ranking.rank_units``); the shipped head set replayed this way reproduces the default attention view (the
largest difference is recorded as ``replay_max_abs_diff``). The second pass (``hop-k``) asks the model once more
with the query followed by the texts of the first ranking's top ``k`` units, and fuses that pass's attention with the
first (mean of the two min-max normalised views) before the default fusion.

Rows: per set, nDCG@10 of BM25, dense, the default (``fused+entities``) and per lever the fused nDCG@10 and the
attention view's own nDCG@10. Held-in = each built task's first questions (offset 0: the head-detection questions)
and the first third of each real set's documents; held-out = later built questions (``--offset 50``) and the other
documents (``benchmarks.quality``'s). Results go to ``benchmarks/results/attention_levers.json``, one entry per
(label, split): ``--append`` keeps the other entries.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from benchmarks.quality import SYNTHETIC_TASKS, Prepared, Scorers, prepare, question_metrics
from benchmarks.report import command_line, run_metadata
from benchmarks.tune_fusion import question_jobs
from shared_core.engine import scoring
from shared_core.engine.heads import HeadSelection, load_head_file, parse_heads
from shared_core.evaluation import REAL_TASKS, shared_data_dir
from shared_core.validation import coerce_document
from shared_core.views import ranking
from shared_core.views.fusion import minmax

logger = logging.getLogger("benchmarks.attention_levers")

DEFAULT_TASKS = (*SYNTHETIC_TASKS, *REAL_TASKS)
DEFAULT_OUT = Path("benchmarks/results/attention_levers.json")
HOPS = (1, 2)
POOLINGS = ("max", "topk_mean", "threshold_sum")
SET_SIZES = (8, 32)
"""Other sizes of a head set whose file ranks every head (``scores``): its best 8 and best 32."""
BANDS = ((0.25, 0.5), (1 / 3, 2 / 3), (0.5, 0.75))
"""Layer bands as fractions of the depth (every head of the band): SmolLM2's 30 layers give 8-14, 10-19, 15-21."""


@dataclass(frozen=True)
class Variant:
    """An attention view: which captured heads (flat ``layer * heads + head`` indices) and which pooling."""

    name: str
    lever: str
    heads: tuple[int, ...]
    pooling: str = "mean"


@dataclass
class Question:
    """One question's per-document views: the default's, each variant's attention and the hop passes'."""

    task: str
    prepared: Prepared
    docs: list[dict[str, Any]] = field(default_factory=list)  # units, entity index, views, lever views
    baselines: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Variants


def _flat(per_layer: dict[int, tuple[int, ...] | None], num_heads: int) -> tuple[int, ...]:
    out: list[int] = []
    for layer, heads in sorted(per_layer.items()):
        out.extend(layer * num_heads + h for h in (heads if heads is not None else range(num_heads)))
    return tuple(out)


def _layer_types(model: Any) -> list[str] | None:
    from shared_core.models.family import text_config

    types = getattr(text_config(model.model), "layer_types", None)
    return list(types) if types else None


def variants(default: HeadSelection, model: Any, head_sets: Sequence[Path]) -> list[Variant]:
    """The default view, the other head sets, layer bands, the default heads restricted to the middle band, global
    layers only (models with sliding-window layers) and the other poolings of the default heads."""
    n_layers, n_heads = model.shape.num_layers, model.shape.num_heads
    base = _flat(default.per_layer, n_heads)
    out = [Variant("default heads", "default", base)]
    for path in head_sets:
        data = load_head_file(path)
        sizes = {len(data["heads"]): list(data["heads"])}
        ranked = list(data.get("scores") or {})  # every head's detection score, best first
        for size in SET_SIZES:
            if len(ranked) >= size and size not in sizes:
                sizes[size] = ranked[:size]
        for size, heads in sorted(sizes.items()):
            name = f"head set {path.stem}" + ("" if heads == data["heads"] else f", top {size}")
            out.append(Variant(name, "head set", _flat(dict(parse_heads(heads, n_layers, n_heads)), n_heads)))
    if default.source != "layers":  # a head set: also every head of the default layer band
        band = list(range(n_layers // 2, n_layers))
        out.append(Variant(f"all heads, layers {band[0]}-{band[-1]}", "layers", _flat(dict.fromkeys(band), n_heads)))
    for lo, hi in BANDS:
        band = list(range(round(lo * n_layers), round(hi * n_layers)))
        out.append(Variant(f"all heads, layers {band[0]}-{band[-1]}", "layers", _flat(dict.fromkeys(band), n_heads)))
    mid = range(round(BANDS[1][0] * n_layers), round(BANDS[1][1] * n_layers))
    kept = tuple(i for i in base if i // n_heads in mid)
    if kept and kept != base:
        out.append(Variant(f"default heads in layers {mid[0]}-{mid[-1]}", "layers", kept))
    types = _layer_types(model)
    if types and any("sliding" in t for t in types):
        full = [i for i, t in enumerate(types) if "sliding" not in t]
        out.append(Variant(f"all heads, global layers {full}", "layers", _flat(dict.fromkeys(full), n_heads)))
        out.append(
            Variant("default heads, global layers", "layers", tuple(i for i in base if i // n_heads in full) or base)
        )
    for pooling in POOLINGS:
        out.append(Variant(f"default heads, {pooling} pooling", "pooling", base, pooling))
    return out


def attention_view(
    token_heads: np.ndarray, n_doc: int, lo: np.ndarray, hi: np.ndarray, variant: Variant, att: Any
) -> np.ndarray:
    """The retriever's attention view from captured heads: mean over the variant's heads, in multiples of a uniform
    share of the document (``x n_doc``), pooled over each unit's tokens."""
    tokens = token_heads[list(variant.heads)].mean(axis=0) * n_doc
    return scoring.pool(tokens, lo, hi, variant.pooling, att.topk, att.threshold_std)


# ---------------------------------------------------------------------------------------------------------------
# Collecting


class Collector:
    """The default retriever (through ``benchmarks.quality.Scorers``) and an all-heads capture engine."""

    def __init__(self, base_config: dict[str, Any], head_sets: Sequence[Path]) -> None:
        from shared_core import AttentionRetriever

        self.scorers = Scorers(base_config)
        self.default = self.scorers.default
        capture = json.loads(json.dumps(base_config))
        capture.setdefault("attention", {}).update({"heads": "all", "layers": [-1]})
        self.capture = AttentionRetriever(capture)
        self.scorers.warm_up(["bm25", "dense", "fused+entities"])
        self.capture.warm_up()
        model = self.capture.model
        self.n_heads = model.shape.num_heads
        self.everything = HeadSelection(dict.fromkeys(range(model.shape.num_layers)), source="levers")
        self.variants = variants(self.default.head_selection, model, head_sets)
        self.att = self.default.config.attention
        self.replay_diff = 0.0

    def _captured(self, queries: list[str], text: str) -> tuple[Any, list[np.ndarray]]:
        tokens, per_query = self.capture.engine.head_token_scores(queries, coerce_document(text, 0), self.everything)
        stacked = [np.concatenate([pl[k].double().cpu().numpy() for k in sorted(pl)], axis=0) for pl in per_query]
        return tokens, stacked

    def group(self, task: str, group: list[Any]) -> list[Question]:
        """Every view of each question of ``group`` (one document for real sets, a built question's documents)."""
        prepared = [p for p in (prepare(ex, self.scorers.segment) for ex in group) if p.gold]
        if not prepared:
            return []
        one_doc = len(prepared[0].example.documents) == 1 and len(prepared) > 1
        questions = [Question(task, p) for p in prepared]
        for name in ("bm25", "dense", "fused+entities"):
            scores = (
                self.scorers.score_many(name, prepared) if one_doc else [self.scorers.score(name, p) for p in prepared]
            )
            for q, sc in zip(questions, scores, strict=True):
                q.baselines[name] = question_metrics(sc, q.prepared)["ndcg@10"]
        n_docs = len(prepared[0].example.documents)
        firsts: list[list[np.ndarray]] = [[] for _ in questions]
        for d in range(n_docs):
            texts = [p.example.documents[d] for p in prepared]
            if len(set(texts)) != 1:
                raise ValueError("the questions of a group must share their documents")
            text = texts[0]
            units = self.default.units(text)
            spans = [(u.start, u.end) for u in units]
            index = self.default.entity_index(text)
            tokens, heads = self._captured([p.example.query for p in prepared], text)
            lo, hi = scoring.unit_token_ranges(tokens.offsets, spans)
            for qi, (q, token_heads) in enumerate(zip(questions, heads, strict=True)):
                views = self.scorers.views[q.prepared.example.id][d]
                lever_views = {
                    v.name: attention_view(token_heads, tokens.n_doc_tokens, lo, hi, v, self.att) for v in self.variants
                }
                diff = float(np.max(np.abs(lever_views["default heads"] - views["attention"]), initial=0.0))
                scale = float(np.max(np.abs(views["attention"]), initial=0.0)) or 1.0
                self.replay_diff = max(self.replay_diff, diff / scale)
                q.docs.append(
                    {"units": units, "index": index, "views": views, "levers": lever_views, "lo": lo, "hi": hi}
                )
                firsts[qi].append(self._final(q, d, views))
        # the second pass: the query with the texts of the default ranking's top k units appended
        for k in HOPS:
            hop_queries = [self._hop_query(q, np.concatenate(f), k) for q, f in zip(questions, firsts, strict=True)]
            for d in range(n_docs):
                text = prepared[0].example.documents[d]
                tokens, heads = self._captured(hop_queries, text)
                for q, token_heads in zip(questions, heads, strict=True):
                    lo, hi = q.docs[d]["lo"], q.docs[d]["hi"]
                    view = attention_view(token_heads, tokens.n_doc_tokens, lo, hi, self.variants[0], self.att)
                    q.docs[d][f"hop{k}"] = view
        for q in questions:
            for doc in q.docs:
                doc.pop("lo"), doc.pop("hi")
        return questions

    def _final(self, q: Question, d: int, views: dict[str, np.ndarray]) -> np.ndarray:
        doc = q.docs[d]
        cfg = self.default.config
        return ranking.rank_units(
            views, doc["units"], doc["index"], cfg.fusion, cfg.entities, q.prepared.example.query
        ).final

    @staticmethod
    def _hop_query(q: Question, final: np.ndarray, k: int) -> str:
        order = np.argsort(-final, kind="stable")[:k]
        texts = [" ".join(q.prepared.texts[i].split()) for i in sorted(order)]  # document order
        return q.prepared.example.query + "\n" + "\n".join(texts)


# ---------------------------------------------------------------------------------------------------------------
# Scoring the levers


def evaluate(questions: Sequence[Question], collector: Collector) -> list[dict[str, Any]]:
    """Per question: the baselines, the default, and per lever the fused and the attention-alone nDCG@10."""
    cfg = collector.default.config
    records = []
    for q in questions:
        query = q.prepared.example.query

        def fused(attention: list[np.ndarray], q: Question = q, query: str = query) -> float:
            finals = []
            for doc, att in zip(q.docs, attention, strict=True):
                views = {**doc["views"], "attention": att}
                finals.append(
                    ranking.rank_units(views, doc["units"], doc["index"], cfg.fusion, cfg.entities, query).final
                )
            return question_metrics(np.concatenate(finals), q.prepared)["ndcg@10"]

        def alone(attention: list[np.ndarray], q: Question = q) -> float:
            return question_metrics(np.concatenate(attention), q.prepared)["ndcg@10"]

        rec: dict[str, Any] = {"id": q.prepared.example.id, "task": q.task, **q.baselines}
        rec["default"] = fused([doc["views"]["attention"] for doc in q.docs])
        rec["levers"] = {}
        for v in collector.variants:
            att = [doc["levers"][v.name] for doc in q.docs]
            rec["levers"][v.name] = {"lever": v.lever, "fused": fused(att), "attention": alone(att)}
        for k in HOPS:
            second = [doc[f"hop{k}"] for doc in q.docs]
            both = [(minmax(doc["views"]["attention"]) + minmax(s)) / 2 for doc, s in zip(q.docs, second, strict=True)]
            rec["levers"][f"second pass, top {k} appended, fused with the first"] = {
                "lever": "second pass",
                "fused": fused(both),
                "attention": alone(both),
            }
            rec["levers"][f"second pass, top {k} appended, alone"] = {
                "lever": "second pass",
                "fused": fused(second),
                "attention": alone(second),
            }
        records.append(rec)
    return records


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean nDCG@10 per set: baselines, default, and per lever fused and attention-alone (and their change)."""
    tasks = list(dict.fromkeys(r["task"] for r in records))
    out: dict[str, Any] = {}
    for t in tasks:
        rs = [r for r in records if r["task"] == t]
        row: dict[str, Any] = {"n": len(rs)}
        for key in ("bm25", "dense", "fused+entities", "default"):
            row[key] = float(np.mean([r[key] for r in rs]))
        row["levers"] = {
            name: {
                "lever": rs[0]["levers"][name]["lever"],
                "fused": float(np.mean([r["levers"][name]["fused"] for r in rs])),
                "attention": float(np.mean([r["levers"][name]["attention"] for r in rs])),
            }
            for name in rs[0]["levers"]
        }
        out[t] = row
    return out


def markdown(summary: dict[str, Any]) -> str:
    """Lever x set tables: fused nDCG@10 change against the default, and the attention view's own nDCG@10."""
    tasks = list(summary)
    names = list(next(iter(summary.values()))["levers"]) if summary else []
    head = "| lever | " + " | ".join(tasks) + " | overall |"
    rule = "|---|" + "---:|" * (len(tasks) + 1)
    lines = ["n = " + " / ".join(str(summary[t]["n"]) for t in tasks), "", head, rule]

    def row(label: str, values: list[float], sign: bool) -> str:
        cells = [f"{v:+.3f}" if sign else f"{v:.3f}" for v in values]
        overall = float(np.mean(values))
        return (
            f"| {label} | " + " | ".join(cells) + f" | {overall:+.3f} |"
            if sign
            else f"| {label} | " + " | ".join(cells) + f" | {overall:.3f} |"
        )

    lines.append(row("default nDCG@10 (fused+entities)", [summary[t]["default"] for t in tasks], False))
    lines.append(row("max(BM25, dense)", [max(summary[t]["bm25"], summary[t]["dense"]) for t in tasks], False))
    for name in names:
        lines.append(
            row(
                f"{name} (fused, change)",
                [summary[t]["levers"][name]["fused"] - summary[t]["default"] for t in tasks],
                True,
            )
        )
    lines += ["", "Attention view alone, nDCG@10:", "", head, rule]
    for name in names:
        lines.append(row(name, [summary[t]["levers"][name]["attention"] for t in tasks], False))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# CLI


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _cuts(text: str) -> dict[str, int]:
    out = {}
    for item in _csv(text):
        name, _, value = item.partition("=")
        out[name] = int(value)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.attention_levers", description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    p.add_argument("--split", choices=["held-in", "held-out"], default="held-in")
    p.add_argument("--n", type=int, default=4, help="questions per built task")
    p.add_argument("--words", type=int, default=1500, help="length of built documents")
    p.add_argument("--offset", type=int, default=None, help="built questions skipped (default: 0 held-in, 50 held-out)")
    p.add_argument("--docs", type=int, default=3, help="documents per real set")
    p.add_argument("--per-doc", type=int, default=3, help="questions per real document")
    p.add_argument(
        "--real-max-words",
        default=None,
        help="cut real documents, e.g. covidqa=4500,qmsum=4000 (default: that held-in, whole held-out)",
    )
    p.add_argument("--head-set", action="append", type=Path, default=[], help="another head-set file (repeatable)")
    p.add_argument("--model", default=None, help="model (hub id, folder or .gguf); default: the embedded default")
    p.add_argument("--label", default=None, help="name of this run in the JSON (default: the model id)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--append", action="store_true", help="keep the other (label, split) entries of --out")
    p.add_argument("--render", action="store_true", help="only print the tables of the runs in --out")
    args = p.parse_args(argv)
    if args.offset is None:
        args.offset = 0 if args.split == "held-in" else 50
    if args.real_max_words is None:
        args.real_max_words = "covidqa=4500,qmsum=4000" if args.split == "held-in" else ""
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.render:  # print the tables of every run already in --out, nothing measured
        for run in json.loads(args.out.read_text(encoding="utf-8"))["runs"]:
            sys.stdout.write(f"{run['label']}, {run['split']}:\n" + markdown(run["summary"]) + "\n\n")
        return 0
    if shared_data_dir() is None:
        logger.error("shared data not found: set ATTNRET_DATA")
        return 2
    base: dict[str, Any] = {"model": {"name": args.model}} if args.model else {}
    t0 = time.perf_counter()
    collector = Collector(base, args.head_set)
    cuts = _cuts(args.real_max_words)
    tasks = _csv(args.tasks)
    jobs = question_jobs(tasks, [args.words], args.n, 0, args.offset, args.split, args.docs, args.per_doc, cuts)
    questions: list[Question] = []
    seconds: dict[str, float] = {}
    for task, group in tqdm(jobs, desc="documents"):
        t = time.perf_counter()
        questions.extend(collector.group(task, group))
        seconds[task] = seconds.get(task, 0.0) + time.perf_counter() - t
    records = evaluate(questions, collector)
    summary = summarise(records)
    from shared_core.models.loading import model_id as resolve_model_id

    model_id = resolve_model_id(collector.default.config.model)
    label = args.label or model_id
    entry = {
        "label": label,
        "split": args.split,
        "model": model_id,
        "default_heads": collector.default.head_selection.source,
        "variants": [
            {"name": v.name, "lever": v.lever, "heads": len(v.heads), "pooling": v.pooling} for v in collector.variants
        ],
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "head_set"}
        | {"head_sets": [str(p) for p in args.head_set], "command": command_line("benchmarks.attention_levers", argv)},
        "replay_max_rel_diff": collector.replay_diff,
        "seconds": {**seconds, "total": time.perf_counter() - t0},
        "meta": run_metadata(),
        "summary": summary,
        "per_question": records,
    }
    runs = []
    if args.append and args.out.is_file():
        runs = [
            r
            for r in json.loads(args.out.read_text(encoding="utf-8"))["runs"]
            if (r["label"], r["split"]) != (label, args.split)
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": [*runs, entry]}, indent=1) + "\n", encoding="utf-8")
    logger.info(
        "wrote %s (replayed default attention view: max relative difference %.2g)", args.out, collector.replay_diff
    )
    sys.stdout.write(f"{label}, {args.split}:\n" + markdown(summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
