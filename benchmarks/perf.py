"""Speed and memory of attnret against the physical limit (one bare forward pass), side by side in one run.

    python -m benchmarks.perf [--quick] [--tokens 1500,3000,6000,16000] [--out benchmarks/results/perf.json]

Each measurement runs in a fresh subprocess, so its peak memory (RSS on CPU, allocator peak on
CUDA) is its own; the model load is measured first and subtracted. Per document length:
- `bare_prefill`: the full model over the document with SDPA, no capture (one forward, the limit);
- `first_query`: attnret's prefill (stopping at the deepest layer used) + query + N/A passes; past the model's
  window, the cascade's pass over the document with the query (the bare prefill still runs the whole document
  at once there, positions past the model's training length: it is the compute that is compared);
- `next_query`: a further query on the cached document (past the window, a new query needs its own cascade pass);
- `naive_eager`: `output_attentions=True` with eager attention (n×n per head and layer), only
  where its estimated size fits `--naive-budget-gb`;
- `dense`, `bm25`: the baselines over the same sentences.
Ratios (first/bare, next/first) are computed within the run, never across runs or machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.naive import DEFAULT_BUDGET_GB, naive_gb
from benchmarks.report import command_line, run_metadata, run_section, update_readme_section

logger = logging.getLogger("benchmarks.perf")

QUERY = "Which facts does the question need?"


def _document(n_tokens: int, seed: int = 0) -> str:
    """A real long document of about `n_tokens` tokens: HotpotQA paragraphs from the shared data."""
    from shared_core.datasets import hotpot_examples, resolve_task_path

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


def _measure(method: str, n_tokens: int, device: str, queue: Any) -> None:
    """Run one method on one document length in this (fresh) process; put its figures on `queue`."""
    import torch

    from shared_core import AttentionRetriever, RetrieverConfig

    doc = _document(n_tokens)
    r = AttentionRetriever(RetrieverConfig.model_validate({"model": {"device": device}}))
    r.warm_up()
    units = r.units(doc)
    loaded = r.model
    n = len(loaded.tokenizer(doc)["input_ids"])
    result: dict[str, Any] = {"method": method, "tokens": n, "units": len(units)}
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
    elif method in ("first_query", "next_query"):
        if method == "next_query":
            r.score_units("What happened first?", doc)
        base = _baseline_mb(device)
        t = time.perf_counter()
        r.score_units(QUERY, doc)
        _sync(device)
    elif method == "dense":
        from shared_core.dense import DenseConfig, DenseScorer

        scorer = DenseScorer(DenseConfig(device=device))
        scorer.embed(["warm up"])
        base = _baseline_mb(device)
        t = time.perf_counter()
        scorer.score(QUERY, [u.text for u in units])
        _sync(device)
    elif method == "bm25":
        from benchmarks.baselines import bm25_scores

        base = _baseline_mb(device)
        t = time.perf_counter()
        bm25_scores(QUERY, [u.text for u in units])
    else:
        raise ValueError(f"unknown method {method}")
    result["seconds"] = time.perf_counter() - t
    result["peak_mb"] = max(_peak_mb(device) - base, 0.0)
    queue.put(result)


def run_one(method: str, n_tokens: int, device: str, timeout: float) -> dict[str, Any] | None:
    """One measurement in a fresh process (peak memory is per process)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(method, n_tokens, device, queue))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        logger.warning("%s at %d tokens timed out after %.0f s", method, n_tokens, timeout)
        return None
    return queue.get() if not queue.empty() else None


def _cell(m: dict[str, dict[str, Any]], name: str, key: str, fmt: str = "{:.2f}") -> str:
    return fmt.format(m[name][key]) if name in m else "—"


def _ratio(m: dict[str, dict[str, Any]], a: str, b: str) -> str:
    if a in m and b in m and m[b]["seconds"]:
        return f"{m[a]['seconds'] / m[b]['seconds']:.3f}"
    return "—"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one row per length, time and memory of each method, and the ratios."""
    by_len: dict[int, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_len.setdefault(r["target"], {})[r["method"]] = r
    head = (
        "| tokens | bare prefill s | first query s | next query s | next/first | first/bare | "
        "attnret peak MB | bare peak MB | naive eager peak MB | dense s | dense peak MB | bm25 s | bm25 peak MB |"
    )
    lines = [head, "|" + "---|" * 13]
    for target in sorted(by_len):
        m = by_len[target]
        tokens = next(iter(m.values()))["tokens"]
        lines.append(
            f"| {tokens} | {_cell(m, 'bare_prefill', 'seconds')} | {_cell(m, 'first_query', 'seconds')} | "
            f"{_cell(m, 'next_query', 'seconds')} | {_ratio(m, 'next_query', 'first_query')} | "
            f"{_ratio(m, 'first_query', 'bare_prefill')} | {_cell(m, 'first_query', 'peak_mb', '{:.0f}')} | "
            f"{_cell(m, 'bare_prefill', 'peak_mb', '{:.0f}')} | {_cell(m, 'naive_eager', 'peak_mb', '{:.0f}')} | "
            f"{_cell(m, 'dense', 'seconds', '{:.3f}')} | {_cell(m, 'dense', 'peak_mb', '{:.0f}')} | "
            f"{_cell(m, 'bm25', 'seconds', '{:.3f}')} | {_cell(m, 'bm25', 'peak_mb', '{:.0f}')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the measurements, write JSON and print the Markdown table."""
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="1500,3000,6000,16000", help="document lengths in tokens, comma-separated")
    parser.add_argument("--quick", action="store_true", help="one short length, for CI")
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
    methods = ["bare_prefill", "first_query", "next_query", "naive_eager", "dense", "bm25"]
    rows: list[dict[str, Any]] = []
    for n in lengths:
        for method in methods:
            if method == "naive_eager" and naive_gb(n) > args.naive_budget_gb:
                logger.info("naive eager at %d tokens needs ~%.0f GB of attention maps: skipped", n, naive_gb(n))
                continue
            logger.info("%s at ~%d tokens ...", method, n)
            res = run_one(method, n, args.device, args.timeout)
            if res is not None:
                res["target"] = n
                rows.append(res)
                logger.info("  %.2f s, %.0f MB", res["seconds"], res["peak_mb"])
    meta = {**run_metadata(), "device": args.device}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    section = run_section(meta, command_line("benchmarks.perf", argv), table(rows), args.device)
    if args.readme:
        update_readme_section(args.readme, section, "perf")
    sys.stdout.write(section + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
