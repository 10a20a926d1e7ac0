"""Reranking benchmark: what pipelines retrieve (many short paragraphs from many documents), reranked per query.

HotpotQA dev (distractor, 100 questions from the shared data). The corpus is every paragraph of every question
(one paragraph = title + text, deduplicated by title); candidates are, per question, the BM25 (bm25s) top 20 and
top 50 of that corpus, and separately the question's own 10 distractor-setting paragraphs. Gold = the paragraphs
named by `supporting_facts` (2 per question). Metrics: nDCG@10, Recall@2 and Recall@5 of the gold paragraphs (a gold
paragraph outside the candidates counts as missed), tie-aware. Methods: the BM25 order, a dense bi-encoder rerank
(all-MiniLM-L6-v2 cosine), attnret `score_candidates` (default config) and its attention view alone. Time per query
of attnret against the candidates' total tokens, and its ratio to one bare prefill of the candidates concatenated
(a plain forward of the model's decoder over the joined text); peak RSS (CPU) or CUDA memory of the process.

Questions 0-19 are held in (used to choose the pooling, the view scales and the position-bias correction; see
docs/rerank.md); the table reports held-out questions only (from 20 on).

    python -m benchmarks.rerank --readme README.md          # 30 questions at top-20/distractor-10, 15 at top-50
    python -m benchmarks.rerank --quick --out /tmp/r.json   # 3 questions, top-10 and distractor-10
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import command_line, publish, run_metadata

logger = logging.getLogger("benchmarks.rerank")

HELD_IN = 20
"""Questions 0..HELD_IN-1 tune the candidate scorer; reported figures start after them."""
METHODS = ("bm25", "dense", "attnret", "attention")
LABELS = {
    "bm25": "BM25 order",
    "dense": "dense rerank (MiniLM)",
    "attnret": "attnret (default)",
    "attention": "attnret attention only",
}


@dataclass(frozen=True)
class Paragraph:
    """One HotpotQA paragraph of the corpus."""

    title: str
    text: str


@dataclass(frozen=True)
class Query:
    """A question, its gold paragraph titles and its own 10 distractor-setting paragraph titles."""

    question: str
    gold: frozenset[str]
    own: tuple[str, ...]


def load(path: str | Path) -> tuple[list[Paragraph], list[Query]]:
    """The corpus (every question's paragraphs, deduplicated by title, in file order) and the questions."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    corpus: dict[str, Paragraph] = {}
    queries = []
    for q in data:
        own = []
        for title, sentences in q["context"]:
            own.append(title)
            corpus.setdefault(title, Paragraph(title, f"{title.strip()}\n{''.join(sentences).strip()}"))
        queries.append(Query(q["question"], frozenset(t for t, _ in q["supporting_facts"]), tuple(own)))
    return list(corpus.values()), queries


class BM25Corpus:
    """bm25s over the corpus paragraphs: the first stage whose top-n the rerankers reorder."""

    def __init__(self, corpus: Sequence[Paragraph]) -> None:
        import bm25s

        self.corpus = list(corpus)
        self.index_of = {p.title: i for i, p in enumerate(self.corpus)}
        self.bm25 = bm25s.BM25()
        self.bm25.index(
            bm25s.tokenize([p.text for p in self.corpus], stopwords="en", show_progress=False), show_progress=False
        )

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every corpus paragraph."""
        import bm25s

        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
        known = [t for t in tokens if t in self.bm25.vocab_dict]
        return np.asarray(self.bm25.get_scores(known), dtype=np.float64) if known else np.zeros(len(self.corpus))

    def candidates(self, query: Query, setting: str) -> tuple[list[Paragraph], np.ndarray]:
        """Candidates of one setting ('top<N>' or 'own') and their BM25 scores, in first-stage order."""
        scores = self.scores(query.question)
        if setting == "own":
            idx = [self.index_of[t] for t in query.own]  # the distractor setting's given order
        else:
            n = int(setting.removeprefix("top"))
            idx = [int(i) for i in np.argsort(-scores, kind="stable")[:n]]
        return [self.corpus[i] for i in idx], scores[idx]


def metrics(scores: Sequence[float] | np.ndarray, relevant: Sequence[bool], n_gold: int) -> dict[str, float]:
    """Tie-aware nDCG@10 and Recall@2/5; gold paragraphs outside the candidates count as missed."""
    from shared_core.evaluation import expected_gains

    gains = expected_gains(scores, {i for i, r in enumerate(relevant) if r})
    discounts = 1.0 / np.log2(np.arange(len(gains)) + 2)
    ideal = float((1.0 / np.log2(np.arange(min(n_gold, 10)) + 2)).sum())
    out = {"ndcg@10": float((gains[:10] * discounts[:10]).sum()) / ideal}
    for k in (2, 5):
        out[f"recall@{k}"] = float(gains[:k].sum()) / n_gold
    return out


def _joined_ids(retriever: Any, texts: Sequence[str]) -> list[int]:
    """Token ids of the candidates joined in prompt order (what the bare prefill reads)."""
    from shared_core.tasks.candidates import join

    return list(retriever.model.tokenizer(join(texts)[0])["input_ids"])


def bare_prefill_seconds(retriever: Any, texts: Sequence[str]) -> tuple[float, int]:
    """Seconds of one plain decoder forward over the candidates joined (prompt order), and its token count."""
    import torch

    loaded = retriever.model
    ids = torch.tensor([_joined_ids(retriever, texts)], device=loaded.device)
    t = time.perf_counter()
    with torch.inference_mode():
        loaded.decoder(input_ids=ids, use_cache=False)
    _sync(loaded.device)
    return time.perf_counter() - t, int(ids.shape[1])


def _sync(device: Any) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _peak_mb(device: Any) -> float:
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_setting(
    retriever: Any, bm25: BM25Corpus, queries: Sequence[Query], setting: str, *, bare: bool = True, **options: Any
) -> list[dict[str, Any]]:
    """One row per question: each method's metrics, attnret's time, the bare prefill time (None with `bare=False`:
    quality runs skip it, it costs more than the rerank on a CPU) and the token count."""
    from shared_core.tasks.candidates import Candidate

    rows = []
    for qi, query in queries:  # type: ignore[misc]
        paragraphs, first = bm25.candidates(query, setting)
        relevant = [p.title in query.gold for p in paragraphs]
        candidates = [Candidate(text=p.text, id=p.title) for p in paragraphs]
        retriever.clear_cache()  # a new joined text per query: no cached prefill to reuse
        t = time.perf_counter()
        hits = retriever.score_candidates(query.question, candidates, **options)
        _sync(retriever.model.device)
        seconds = time.perf_counter() - t
        t = time.perf_counter()
        cosine = retriever.dense.score(query.question, [p.text for p in paragraphs])
        dense_seconds = time.perf_counter() - t
        texts = [p.text for p in paragraphs]
        prefill, n_tokens = (
            bare_prefill_seconds(retriever, texts) if bare else (None, len(_joined_ids(retriever, texts)))
        )
        scores = {
            "bm25": np.asarray(first) - 1e-9 * np.arange(len(first)),  # the first stage's order, ties as ranked
            "dense": np.asarray(cosine, dtype=np.float64),
            "attnret": np.array([h.score for h in hits]),
            "attention": np.array([h.scores["attention_raw"] for h in hits]),
        }
        rows.append(
            {
                "question": qi,
                "setting": setting,
                "candidates": len(paragraphs),
                "tokens": n_tokens,
                "gold_in_candidates": int(sum(relevant)),
                "seconds": seconds,
                "dense_seconds": dense_seconds,
                "prefill_seconds": prefill,
                "metrics": {m: metrics(scores[m], relevant, len(query.gold)) for m in METHODS},
            }
        )
        logger.info(
            "q%d %s: %d cands, %d tok, %.2fs (prefill %s s), nDCG attnret %.2f bm25 %.2f",
            qi,
            setting,
            len(paragraphs),
            n_tokens,
            seconds,
            "-" if prefill is None else f"{prefill:.2f}",
            rows[-1]["metrics"]["attnret"]["ndcg@10"],
            rows[-1]["metrics"]["bm25"]["ndcg@10"],
        )
    return rows


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean, or None when any value is missing (a run without the bare prefill)."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if len(present) == len(values) else None


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting: mean metrics per method, mean candidates/tokens, time per query and its ratio to the prefill."""
    out = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        part = [r for r in rows if r["setting"] == setting]
        summary: dict[str, Any] = {
            "setting": setting,
            "questions": len(part),
            "candidates": float(np.mean([r["candidates"] for r in part])),
            "tokens": float(np.mean([r["tokens"] for r in part])),
            "gold_in_candidates": float(np.mean([r["gold_in_candidates"] for r in part])),
            "seconds": float(np.mean([r["seconds"] for r in part])),
            "dense_seconds": float(np.mean([r["dense_seconds"] for r in part])),
            "prefill_seconds": _mean_or_none([r["prefill_seconds"] for r in part]),
            "ratio": _mean_or_none(
                [r["seconds"] / r["prefill_seconds"] if r["prefill_seconds"] else None for r in part]
            ),
            "metrics": {
                m: {k: float(np.mean([r["metrics"][m][k] for r in part])) for k in part[0]["metrics"][m]}
                for m in METHODS
            },
        }
        out.append(summary)
    return out


def table(summaries: Sequence[dict[str, Any]], peak_mb: float) -> str:
    """Markdown: one row per setting and method, plus the time columns for attnret."""
    head = (
        "| candidates | questions | method | nDCG@10 | R@2 | R@5 | s/query | × bare prefill |\n"
        "|---|---:|---|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for s in summaries:
        name = "own 10 (distractor)" if s["setting"] == "own" else f"BM25 {s['setting']}"
        where = f"{name}, {s['tokens']:.0f} tok"
        for m in METHODS:
            v = s["metrics"][m]
            t = {"attnret": f"{s['seconds']:.2f}", "dense": f"{s['dense_seconds']:.2f}"}.get(m, "")
            ratio = ("–" if s["ratio"] is None else f"{s['ratio']:.2f}") if m == "attnret" else ""
            lines.append(
                f"| {where} | {s['questions']} | {LABELS[m]} | {v['ndcg@10']:.3f} | {v['recall@2']:.3f} | "
                f"{v['recall@5']:.3f} | {t} | {ratio} |"
            )
            where = ""
    lines.append("")
    lines.append(
        f"Time per query is wall time of `score_candidates` (model read, dense and lexical views); the bare prefill "
        f"is one plain decoder forward over the same candidates joined. Peak memory of the process: {peak_mb:.0f} MB."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the settings, write JSON, print (and optionally put in the README) the table."""
    from shared_core import AttentionRetriever, RetrieverConfig
    from shared_core.evaluation import resolve_task_path
    from shared_core.models.loading import model_id

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="HotpotQA JSON (default: the shared data's hotpotqa file)")
    p.add_argument("--n", type=int, default=30, help="held-out questions at top-20 and own-10")
    p.add_argument("--n50", type=int, default=15, help="held-out questions at top-50")
    p.add_argument("--start", type=int, default=HELD_IN, help="first question (held-in ones are below 20)")
    p.add_argument("--quick", action="store_true", help="3 questions (at most --n) at top-10 and own-10 (CI)")
    p.add_argument("--device", default=None, help="model device (default: the config's, auto)")
    p.add_argument("--config", default=None, help="retriever config YAML (default: the defaults)")
    p.add_argument("--out", default="benchmarks/results/rerank.json")
    p.add_argument("--no-bare", action="store_true", help="skip the bare prefill per question (quality runs)")
    p.add_argument("--readme", default=None, help="README whose rerank section is rewritten with the table")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = Path(args.data) if args.data else resolve_task_path("hotpotqa")
    corpus, queries = load(path)
    bm25 = BM25Corpus(corpus)
    config = RetrieverConfig.from_yaml(Path(args.config)) if args.config else RetrieverConfig()
    if args.device:
        config = config.model_copy(update={"model": config.model.model_copy(update={"device": args.device})})
    retriever = AttentionRetriever(config)
    retriever.warm_up()
    retriever.dense.warm_up()
    if args.quick:
        plan = [("top10", min(args.n, 3)), ("own", min(args.n, 3))]
    else:
        plan = [("top20", args.n), ("own", args.n), ("top50", args.n50)]
    base_mb = _peak_mb(retriever.model.device)
    rows: list[dict[str, Any]] = []
    for setting, n in plan:
        if n <= 0:
            continue
        chosen = list(enumerate(queries))[args.start : args.start + n]
        rows.extend(run_setting(retriever, bm25, chosen, setting, bare=not args.no_bare))
    peak = _peak_mb(retriever.model.device)
    summaries = summarise(rows)
    meta = {**run_metadata(), "device": str(retriever.model.device), "peak_mb": peak, "peak_mb_before": base_mb}
    meta |= {"config": args.config, "model": model_id(config.model), "heads": retriever.head_selection.source}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "summary": summaries, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    publish(
        "rerank", meta, command_line("benchmarks.rerank", argv), table(summaries, peak), meta["device"], args.readme
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
