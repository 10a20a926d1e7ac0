"""Throughput of the Ray Data batch runner against a plain Python loop over `retrieve`, on CPU.

Jobs: HotpotQA dev questions against HotpotQA contexts (10 paragraphs, ~1k tokens each, from the shared data), a few
questions per document (the document's own question and the next ones'). Four timed runs, each from a cold model,
torch on 1 thread in the loops and in each actor (an actor reserves 1 CPU):

- loop over retrieve       `retrieve` per job in one process: what a user writes without the runner
- loop over retrieve_many  `retrieve_many` once per document: the engine calls the runner makes, without Ray
- Ray Data, 1 actor        `run_batch(concurrency=1, num_cpus_per_worker=1)` on a local Ray of 2 CPUs
- Ray Data, 2 actors       `run_batch(concurrency=2, num_cpus_per_worker=1)`

Every time covers model loading and, for the runner, writing its outputs; the local Ray's start is timed on its own.
Runner overhead per job = (Ray 1 actor - loop over retrieve_many) / jobs; scaling efficiency = the speed-up of 2
actors over 1, divided by 2.

    python -m benchmarks.ray_batch --quick      # 4 documents x 2 questions: a few minutes on 2 busy cores
    python -m benchmarks.ray_batch              # 10 documents x 3 questions (the README's run)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.report import REPO_ROOT, command_line, run_metadata, run_section, update_readme_section
from shared_core import AttentionRetriever, Document, RetrieverConfig
from shared_core.evaluation import shared_data_dir

logger = logging.getLogger("ray_batch")

RESULTS = REPO_ROOT / "benchmarks" / "results" / "ray_batch.json"
HOTPOT = Path("hotpotqa") / "hotpot_dev_distractor_100.json"
RAY_ENV = {"RAY_DEDUP_LOGS": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def build_jobs(data_dir: Path, documents: int, per_document: int, top_k: int) -> list[dict[str, Any]]:
    """`per_document` questions on each of the first `documents` HotpotQA contexts (its own and the next ones')."""
    items = json.loads((data_dir / HOTPOT).read_text(encoding="utf-8"))
    if documents > len(items):
        raise SystemExit(f"--documents {documents}: the shared HotpotQA file has {len(items)} contexts")
    jobs = []
    for d in range(documents):
        text = "\n\n".join(f"{title}\n{''.join(sentences)}" for title, sentences in items[d]["context"])
        for q in range(per_document):
            question = items[(d + q) % len(items)]["question"]
            jobs.append(
                {
                    "job_id": f"{d}-{q}",
                    "query": question,
                    "document": text,
                    "document_id": items[d]["_id"],
                    "top_k": top_k,
                }
            )
    return jobs


def run_loop(jobs: list[dict[str, Any]], threads: int, many: bool) -> tuple[float, dict[str, list[tuple[int, int]]]]:
    """Seconds for a cold retriever to answer every job (`retrieve` per job, or `retrieve_many` per document), and
    each job's hit spans."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        retriever = AttentionRetriever(RetrieverConfig())
        spans = {}
        groups: dict[str, list[dict[str, Any]]] = {}
        for job in jobs:
            groups.setdefault(job["document_id"], []).append(job)
        for group in groups.values():
            doc = Document(group[0]["document"], id=group[0]["document_id"])
            top_k = max(j["top_k"] for j in group)
            if many:
                per_query = retriever.retrieve_many([j["query"] for j in group], [doc], top_k)
            else:
                per_query = [retriever.retrieve(j["query"], [doc], top_k) for j in group]
            for job, hits in zip(group, per_query, strict=True):
                spans[job["job_id"]] = [(h.start, h.end) for h in hits[: job["top_k"]]]
        return time.perf_counter() - started, spans
    finally:
        torch.set_num_threads(before)


def run_ray(
    jobs: list[dict[str, Any]], actors: int, batch_size: int
) -> tuple[float, dict[str, list[tuple[int, int]]], Any]:
    """Seconds of `run_batch` with `actors` actors of 1 CPU each on the running local Ray, hit spans, summary."""
    from shared_core.batch import read_output, run_batch

    with tempfile.TemporaryDirectory(prefix="attnret-ray-bench-") as tmp:
        out = Path(tmp) / "hits.parquet"
        started = time.perf_counter()
        summary = run_batch(jobs, out, concurrency=actors, num_cpus_per_worker=1, batch_size=batch_size)
        seconds = time.perf_counter() - started
        rows = sorted(read_output(str(out)).to_pylist(), key=lambda r: (r["job_id"], r["rank"]))
    spans: dict[str, list[tuple[int, int]]] = {}
    for r in rows:
        spans.setdefault(r["job_id"], []).append((r["start"], r["end"]))
    return seconds, spans, summary


def markdown(result: dict[str, Any]) -> str:
    """The README table and the derived figures."""
    n = result["jobs"]
    runs = result["runs"]
    base = runs["loop over retrieve"]["seconds"]
    lines = [
        f"{n} jobs: {result['documents']} HotpotQA contexts (~1k tokens) x {result['per_document']} questions, "
        f"top_k {result['top_k']}, default config, CPU.",
        "",
        "| runner | workers x CPU threads | wall s | jobs/s | speed vs loop over retrieve |",
        "|---|---|---:|---:|---:|",
    ]
    for name, r in runs.items():
        lines.append(
            f"| {name} | {r['workers']} x {r['threads']} | {r['seconds']:.1f} | {n / r['seconds']:.2f} | "
            f"{base / r['seconds']:.2f}x |"
        )
    one, two = runs["Ray Data, 1 actor"]["seconds"], runs["Ray Data, 2 actors"]["seconds"]
    same_calls = runs["loop over retrieve_many"]["seconds"]
    lines += [
        "",
        f"Runner overhead: {(one - same_calls) / n * 1000:+.0f} ms per job (1 actor vs the loop over retrieve_many, "
        f"model load included in both); local Ray start {result['ray_start_s']:.1f} s, not in the table. "
        f"Scaling efficiency 1 -> 2 actors: {one / two / 2:.0%}. Hits identical to the loop's: {result['identical']}. "
        f"Load average {result['load_before']:.1f} before, {result['load_after']:.1f} after: other agents were "
        "using these 2 cores during the run.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_batch", description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=10, help="HotpotQA contexts (default 10)")
    parser.add_argument("--per-document", type=int, default=3, help="questions per context (default 3)")
    parser.add_argument("--top-k", type=int, default=5, help="hits per job (default 5)")
    parser.add_argument("--batch-size", type=int, default=6, help="jobs per Ray batch (default 6: two documents)")
    parser.add_argument("--loop-threads", type=int, default=1, help="torch threads of the loops (default 1)")
    parser.add_argument("--quick", action="store_true", help="4 documents x 2 questions")
    parser.add_argument("--readme", help="rewrite the ray section of this README")
    parser.add_argument("--results", help=f"JSON results file (default {RESULTS}; --quick: ray_batch.quick.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    if args.quick:
        args.documents, args.per_document = 4, 2
    results = Path(args.results or (RESULTS.with_suffix(".quick.json") if args.quick else RESULTS))
    data_dir = shared_data_dir()
    if data_dir is None:
        raise SystemExit("the shared data folder (../shared/data, or $ATTNRET_DATA) is absent")
    os.environ.update(RAY_ENV)
    import ray

    jobs = build_jobs(data_dir, args.documents, args.per_document, args.top_k)
    load_before = os.getloadavg()[0]
    runs: dict[str, dict[str, Any]] = {}
    spans: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for name, many in (("loop over retrieve", False), ("loop over retrieve_many", True)):
        seconds, spans[name] = run_loop(jobs, args.loop_threads, many)
        runs[name] = {"workers": 1, "threads": args.loop_threads, "seconds": seconds}
        logger.info("%s: %.1f s", name, seconds)
    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2)
    ray_start = time.perf_counter() - started
    try:
        for actors in (1, 2):
            name = f"Ray Data, {actors} actor{'s' * (actors > 1)}"
            seconds, spans[name], summary = run_ray(jobs, actors, args.batch_size)
            if summary.done != len(jobs):
                raise SystemExit(f"{name}: {summary.line()}")
            runs[name] = {"workers": actors, "threads": 1, "seconds": seconds, "summary": summary.line()}
            logger.info("%s: %.1f s (%s)", name, seconds, summary.line())
    finally:
        ray.shutdown()
    reference = spans["loop over retrieve"]
    same = [name for name, s in spans.items() if s == reference]
    result = {
        "meta": run_metadata(),
        "jobs": len(jobs),
        "documents": args.documents,
        "per_document": args.per_document,
        "top_k": args.top_k,
        "batch_size": args.batch_size,
        "ray_start_s": ray_start,
        "runs": runs,
        "identical": "yes" if len(same) == len(spans) else f"only {', '.join(same)}",
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = markdown(result)
    sys.stdout.write(table + "\n")
    if args.readme:
        section = run_section(result["meta"], command_line("benchmarks.ray_batch", argv), table)
        update_readme_section(args.readme, section, "ray")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
