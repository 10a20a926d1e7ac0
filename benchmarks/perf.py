"""Speed and memory of attnret against the physical limit (one bare forward pass), side by side in one run.

    python -m benchmarks.perf [--quick] [--tokens 2000,7000,20000,40000] [--methods attnret,...] [--out ...]

Each group of measurements runs in a fresh subprocess, so its peak memory (RSS on CPU, allocator peak on CUDA) is its
own; the model load is measured first and subtracted. Per document length:
- `bare_prefill`: the full model over the document with SDPA, no capture (one forward, the limit);
- `first_query`: a first `score_units` on a new document end to end, as a user pays it (the models already loaded,
  as the bare prefill's is): segmentation, entities, unit embeddings, BM25 index, in a second thread beside the
  prefill stopping at the deepest layer used and the query and N/A passes (past the window, beside the cascade's
  pass over the document with the query); `analysis_s` is the analysis alone, of another document of that length;
- `next_query`: a further query on the same document (a query pass on the cached prefill; past the window a
  replay of the kept pass);
- `queries_50`: 50 different questions asked one after another on one document (total time and queries/s): one
  read, then 49 further queries;
- `queries_50_many`: the same 50 questions in one `score_units_many` call on another new document of that length
  (its analysis included, as for `first_query`): one read for all of them, packed `attention.query_batch` per forward;
- `grown`: the document grown by one turn (~40 tokens), asked a new question after the first read: within the
  window only the new tokens are prefilled, past it the pass resumes after the last shared chunk;
- `kept_mb`: memory held by the kept pass past the window (what later queries replay);
- `naive_eager`: `output_attentions=True` with eager attention (n×n per head and layer), only where its estimated
  size fits `--naive-budget-gb`;
- `dense`, `bm25` (one query) and `dense_50`, `bm25_50` (the same 50 questions, embeddings/index built once).
Ratios (first/bare, next/first, 50/first, 50 in one call/first, grown/first) are computed within the run, never
across runs or machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import resource
import time
from pathlib import Path
from typing import Any

from benchmarks.naive import DEFAULT_BUDGET_GB, naive_gb
from benchmarks.report import command_line, publish, run_metadata

logger = logging.getLogger("benchmarks.perf")

QUERY = "Which facts does the question need?"
METHODS = ("bare_prefill", "attnret", "naive_eager", "dense", "bm25")
GROWN_TURN = "\n\nMaria Lopez: Let us come back to this next week, after the committee has read the report."


def _questions(n: int = 50) -> list[str]:
    """`n` different real questions (HotpotQA), asked of the benchmark document one after another."""
    from shared_core.evaluation import resolve_task_path

    data = json.loads(Path(resolve_task_path("hotpotqa")).read_text(encoding="utf-8"))
    return [ex["question"] for ex in data[:n]]


def _document(n_tokens: int, seed: int = 0) -> str:
    """A real long document of about `n_tokens` tokens: HotpotQA paragraphs from the shared data."""
    from shared_core.evaluation import hotpot_examples, resolve_task_path

    (ex,) = hotpot_examples(resolve_task_path("hotpotqa"), n=1, target_words=int(n_tokens * 0.72), seed=seed)
    return ex.documents[0]


def _peak_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _baseline_mb(device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _measure(method: str, n_tokens: int, device: str, queue: Any, n_questions: int = 50) -> None:
    """Run one group of measurements on one document length in this (fresh) process; put its figures on `queue`."""
    import torch

    from shared_core import AttentionRetriever, Document, RetrieverConfig

    doc = _document(n_tokens)
    r = AttentionRetriever(
        RetrieverConfig.model_validate({"model": {"device": device}, "cascade": {"reuse_disk": False}})
    )
    r.warm_up()
    loaded = r.model
    n = len(loaded.tokenizer(doc)["input_ids"])
    result: dict[str, Any] = {"method": method, "tokens": n}
    if method in ("bare_prefill", "naive_eager"):
        model = loaded.model
        if method == "naive_eager":
            model.set_attn_implementation("eager")
        ids = torch.tensor([loaded.tokenizer(doc)["input_ids"]], device=loaded.device)
        base = _baseline_mb(device)
        t = time.perf_counter()
        with torch.inference_mode():
            model(input_ids=ids, output_attentions=method == "naive_eager", logits_to_keep=1, use_cache=False)
        _sync(device)
        result["seconds"] = time.perf_counter() - t
    elif method == "attnret":
        questions = _questions(n_questions)
        result["questions"] = len(questions)
        r.units("Warm up the pipelines. Mary met Anna in Paris.")  # loads spaCy and the encoder: once per process
        base = _baseline_mb(device)
        t = time.perf_counter()
        r.score_units(QUERY, doc)  # everything: the analysis runs beside the model's read
        _sync(device)
        result["seconds"] = result["first_query_s"] = time.perf_counter() - t
        t = time.perf_counter()
        r.units(_document(n_tokens, seed=2))  # the analysis alone: segmentation, entities, embeddings, BM25 index
        result["analysis_s"] = time.perf_counter() - t
        result["kept_mb"] = r.engine.past.states.memory_used / 2**20
        times = []
        for q in questions[1:]:
            t = time.perf_counter()
            r.score_units(q, doc)
            _sync(device)
            times.append(time.perf_counter() - t)
        result["next_query_s"] = times[0]
        result["queries_50_s"] = result["first_query_s"] + sum(times)
        t = time.perf_counter()
        r.score_units(questions[0], Document(doc + GROWN_TURN))
        _sync(device)
        result["grown_s"] = time.perf_counter() - t
        other = _document(n_tokens, seed=1)
        t = time.perf_counter()
        r.score_units_many(questions, other)
        _sync(device)
        result["queries_50_many_s"] = time.perf_counter() - t
        result["stats"] = dict(r.stats)
    elif method in ("dense", "bm25"):
        from shared_core.config import DenseConfig, LexicalConfig
        from shared_core.views.dense import DenseScorer
        from shared_core.views.lexical import LexicalIndex

        units = [u.text for u in r.units(doc)]
        questions = _questions()
        scorer = DenseScorer(DenseConfig(device=device))
        scorer.embed(["warm up"])
        base = _baseline_mb(device)
        t = time.perf_counter()
        if method == "dense":
            vectors = scorer.embed(units)
            scorer.score(QUERY, vectors)
            result["seconds"] = time.perf_counter() - t
            for q in questions[1:]:
                scorer.score(q, vectors)
        else:
            index = LexicalIndex.build(units, LexicalConfig())
            index.score(QUERY)
            result["seconds"] = time.perf_counter() - t
            for q in questions[1:]:
                index.score(q)
        _sync(device)
        result["queries_50_s"] = time.perf_counter() - t
    else:
        raise ValueError(f"unknown method {method}")
    result["peak_mb"] = max(_peak_mb(device) - base, 0.0)
    queue.put(result)


def run_one(method: str, n_tokens: int, device: str, timeout: float, questions: int = 50) -> dict[str, Any] | None:
    """One measurement in a fresh process (peak memory is per process)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(method, n_tokens, device, queue, questions))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        logger.warning("%s at %d tokens timed out after %.0f s", method, n_tokens, timeout)
        return None
    return queue.get() if not queue.empty() else None


def _cell(m: dict[str, dict[str, Any]], name: str, key: str, fmt: str = "{:.2f}") -> str:
    return fmt.format(m[name][key]) if name in m and key in m[name] else "—"


def _ratio(m: dict[str, dict[str, Any]], a: tuple[str, str], b: tuple[str, str]) -> str:
    (ma, ka), (mb, kb) = a, b
    if ma in m and mb in m and ka in m[ma] and m[mb].get(kb):
        return f"{m[ma][ka] / m[mb][kb]:.3f}"
    return "—"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one row per length, time and memory of each measurement, and the ratios within the run."""
    by_len: dict[int, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_len.setdefault(r["target"], {})[r["method"]] = r
    head = (
        "| tokens | bare prefill s | first query s (analysis s) | first/bare | next query s | next/first | "
        "50 queries s | queries/s | 50/first | 50 in one call s | 50 in one call/first | grown by a turn s | "
        "grown/first | kept MB | attnret peak MB | "
        "bare peak MB | naive eager peak MB | dense s (50) | bm25 s (50) |"
    )
    lines = [head, "|" + "---|" * 19]
    a = "attnret"
    for target in sorted(by_len):
        m = by_len[target]
        tokens = next(iter(m.values()))["tokens"]
        qps = f"{50 / m[a]['queries_50_s']:.2f}" if a in m and m[a].get("queries_50_s") else "—"
        lines.append(
            f"| {tokens} | {_cell(m, 'bare_prefill', 'seconds')} | {_cell(m, a, 'first_query_s')} "
            f"({_cell(m, a, 'analysis_s')}) | {_ratio(m, (a, 'first_query_s'), ('bare_prefill', 'seconds'))} | "
            f"{_cell(m, a, 'next_query_s')} | {_ratio(m, (a, 'next_query_s'), (a, 'first_query_s'))} | "
            f"{_cell(m, a, 'queries_50_s')} | {qps} | {_ratio(m, (a, 'queries_50_s'), (a, 'first_query_s'))} | "
            f"{_cell(m, a, 'queries_50_many_s')} | {_ratio(m, (a, 'queries_50_many_s'), (a, 'first_query_s'))} | "
            f"{_cell(m, a, 'grown_s')} | {_ratio(m, (a, 'grown_s'), (a, 'first_query_s'))} | "
            f"{_cell(m, a, 'kept_mb', '{:.0f}')} | {_cell(m, a, 'peak_mb', '{:.0f}')} | "
            f"{_cell(m, 'bare_prefill', 'peak_mb', '{:.0f}')} | {_cell(m, 'naive_eager', 'peak_mb', '{:.0f}')} | "
            f"{_cell(m, 'dense', 'seconds', '{:.3f}')} ({_cell(m, 'dense', 'queries_50_s', '{:.2f}')}) | "
            f"{_cell(m, 'bm25', 'seconds', '{:.3f}')} ({_cell(m, 'bm25', 'queries_50_s', '{:.3f}')}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the measurements, write JSON and print the Markdown table."""
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="2000,7000,20000,40000", help="document lengths in tokens, comma-separated")
    parser.add_argument("--quick", action="store_true", help="one short length, for CI")
    parser.add_argument(
        "--questions", type=int, default=50, help="questions asked per document (the `queries_50` figures); 50"
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="measurements to run, comma-separated")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--naive-budget-gb", type=float, default=DEFAULT_BUDGET_GB, help="skip naive eager above this size"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    parser.add_argument("--out", default="benchmarks/results/perf.json")
    parser.add_argument("--readme", default=None, help="README whose perf section is rewritten with the table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    lengths = [600] if args.quick else [int(x) for x in args.tokens.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    rows: list[dict[str, Any]] = []
    meta = {**run_metadata(), "device": args.device, "torch_threads": torch.get_num_threads()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)  # written after every measurement: a cut run keeps its rows
    for n in lengths:
        for method in methods:
            if method == "naive_eager" and naive_gb(n) > args.naive_budget_gb:
                logger.info("naive eager at %d tokens needs ~%.0f GB of attention maps: skipped", n, naive_gb(n))
                continue
            logger.info("%s at ~%d tokens ...", method, n)
            res = run_one(method, n, args.device, args.timeout, args.questions)
            if res is not None:
                res["target"] = n
                rows.append(res)
                logger.info("  %.2f s, %.0f MB", res.get("seconds", float("nan")), res["peak_mb"])
                out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    publish("perf", meta, command_line("benchmarks.perf", argv), table(rows), args.device, args.readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
