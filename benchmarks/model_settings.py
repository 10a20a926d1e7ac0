"""CPU settings for one model on one real paper: torch threads, dtype and int8 layers, each in a fresh process.

    python -m benchmarks.model_settings [--model qwen2.5-coder-0.5b-instruct] [--settings default,t1,t2,bf16,int8]
        [--questions 5] [--tokens 5000] [--out benchmarks/results/model_settings.json]

A setting is `default` (torch's own thread count, the configured dtype), `tN` (`torch.set_num_threads(N)` before
anything runs), `bf16` / `fp32` (`model.dtype`), `int8` (`model.quantize: int8`, dynamic int8 linear layers with
torchao, in float32), `pN` (the engine's prefill in steps of N tokens instead of `PREFILL_CHUNK`), `frozen`
(`attention.query_adapter: false`: the question read without the head set's query adapter), `adapter`
(`query_adapter: true`: the head set's adapter, required, from beside its file or the user cache), or a combination
joined by `+` (`t1+bf16`, `t1+int8`, `int8+p512`). Per setting, on the
COVID-QA paper whose length is nearest `--tokens`: the model load (converted cache), a first `score_units` on the
paper end to end (analysis beside the read), each further question on the cached paper, peak RSS of the process
so far, then a bare full-model prefill of the same document tokens (SDPA, no capture: the limit). Scores are
compared with the first setting's: the top-10 units (fused and attention alone) and nDCG@10 against the answers.
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

from benchmarks.report import command_line, run_metadata

logger = logging.getLogger("benchmarks.model_settings")


def _paper(n_tokens: int, n_questions: int) -> tuple[str, list[tuple[str, list[tuple[int, int]]]]]:
    """The COVID-QA paper nearest `n_tokens` tokens (estimated as 1.35 tokens a word; each process reports the
    exact count) with at least `n_questions` questions: its text and its first questions with their answer spans."""
    from shared_core.evaluation import covidqa_examples, resolve_task_path

    by_doc: dict[str, list[Any]] = {}
    for ex in covidqa_examples(resolve_task_path("covidqa"), split="all"):
        by_doc.setdefault(str(ex.document_id), []).append(ex)
    sized = [
        (abs(len(exs[0].documents[0].split()) * 1.35 - n_tokens), doc_id)
        for doc_id, exs in by_doc.items()
        if len(exs) >= n_questions
    ]
    _, doc_id = min(sized)
    picked = by_doc[doc_id][:n_questions]
    return picked[0].documents[0], [(ex.query, [(g.start, g.end) for g in ex.gold]) for ex in picked]


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def model_setting(model: str, parts: set[str]) -> dict[str, Any]:
    """The `model` config section of a setting's parts: `bf16` / `fp32` pick the dtype, `int8` quantizes the
    decoder's linear layers (in float32: int8 refuses a half-precision dtype)."""
    int8 = "int8" in parts
    dtype = "bfloat16" if "bf16" in parts else "float32" if "fp32" in parts or int8 else "auto"
    return {"name": model, "dtype": dtype, "quantize": "int8" if int8 else "none"}


def setting_parts(setting: str) -> set[str]:
    """The parts of a setting (`t1+int8` -> {'t1', 'int8'}); an unknown part or a refused combination (`bf16+int8`)
    is a ValueError here, before a process is spawned for it."""
    from shared_core import RetrieverConfig

    parts = {p for p in setting.split("+") if p != "default"}
    named = ("bf16", "fp32", "int8", "frozen", "adapter")
    unknown = {p for p in parts if p not in named and not (p[:1] in "tp" and p[1:].isdigit())}
    if unknown:
        raise ValueError(f"--settings: unknown part(s) {sorted(unknown)} in {setting!r}; see the module doc")
    if {"frozen", "adapter"} <= parts:
        raise ValueError(f"--settings: {setting!r} asks for the query adapter both off (frozen) and on (adapter)")
    RetrieverConfig.model_validate({"model": model_setting("x", parts)})  # e.g. bf16+int8: a ConfigError naming why
    return parts


def _measure(
    model: str, setting: str, doc: str, questions: list[tuple[str, list[tuple[int, int]]]], queue: Any
) -> None:
    """One setting in this fresh process: load, first query, further queries, peak RSS, bare prefill."""
    import torch

    parts = setting_parts(setting)
    from shared_core.engine import attention_engine

    for p in parts:
        if p.startswith("t"):
            torch.set_num_threads(int(p[1:]))
        if p.startswith("p"):
            attention_engine.PREFILL_CHUNK = int(p[1:])
    from shared_core import AttentionRetriever, RetrieverConfig
    from shared_core.evaluation.metrics import ndcg_at_k

    model_section = model_setting(model, parts)
    result: dict[str, Any] = {"setting": setting, "threads": torch.get_num_threads(), "dtype": model_section["dtype"]}
    result["quantize"] = model_section["quantize"]
    result["prefill_chunk"] = attention_engine.PREFILL_CHUNK
    wanted = False if "frozen" in parts else True if "adapter" in parts else "auto"
    result["query_adapter"] = wanted
    attention = {} if wanted == "auto" else {"query_adapter": wanted}
    cfg = RetrieverConfig.model_validate(
        {"model": model_section, "attention": attention, "cascade": {"reuse_disk": False}}
    )
    t = time.perf_counter()
    r = AttentionRetriever(cfg)
    r.warm_up()
    result["load_s"] = time.perf_counter() - t
    r.units("Warm up the pipelines. Mary met Anna in Paris.")  # spaCy and the encoder: once per process
    result["rss_after_load_gb"] = _rss_gb()
    loaded = r.model
    result["doc_tokens"] = len(loaded.tokenizer(doc)["input_ids"])
    units = r.units(doc)
    times, top_fused, top_attention, ndcg = [], [], [], []
    for query, gold_spans in questions:
        t = time.perf_counter()
        hits = r.score_units(query, doc)
        times.append(time.perf_counter() - t)
        fused = sorted(range(len(hits)), key=lambda i: -hits[i].score)
        attention = sorted(range(len(hits)), key=lambda i: -hits[i].scores["attention"])
        gold = {i for i, u in enumerate(units) if any(u.start < e and s < u.end for s, e in gold_spans)}
        top_fused.append(fused[:10])
        top_attention.append(attention[:10])
        ndcg.append(ndcg_at_k(fused, gold, 10) if gold else None)
    result.update(first_query_s=times[0], further_query_s=times[1:], top10_fused=top_fused)
    result.update(top10_attention=top_attention, ndcg10=ndcg, peak_rss_gb=_rss_gb(), stats=dict(r.stats))
    ids = torch.tensor([loaded.tokenizer(doc)["input_ids"]], device=loaded.device)
    t = time.perf_counter()
    with torch.inference_mode():
        loaded.model(input_ids=ids, logits_to_keep=1, use_cache=False)
    result["bare_prefill_s"] = time.perf_counter() - t
    result["peak_rss_with_bare_gb"] = _rss_gb()
    queue.put(result)


def run_setting(model: str, setting: str, doc: str, questions: list[Any], timeout: float) -> dict[str, Any] | None:
    """One setting in a fresh process (threads and peak memory are per process)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(model, setting, doc, questions, queue))
    proc.start()
    result = None
    try:
        result = queue.get(timeout=timeout)
    except Exception:  # queue.Empty or a dead child: reported below
        logger.warning("setting %s gave no result within %.0f s", setting, timeout)
    proc.join(10)
    if proc.is_alive():
        proc.kill()
    return result


def compare(rows: list[dict[str, Any]]) -> None:
    """Add to each row how its rankings differ from the first row's (same top-10 sets in order, nDCG delta)."""
    ref = rows[0]
    for row in rows:
        row["same_top10_fused"] = sum(a == b for a, b in zip(row["top10_fused"], ref["top10_fused"], strict=True))
        row["same_top10_attention"] = sum(
            a == b for a, b in zip(row["top10_attention"], ref["top10_attention"], strict=True)
        )
        deltas = [abs(a - b) for a, b in zip(row["ndcg10"], ref["ndcg10"], strict=True) if a is not None]
        row["max_ndcg_delta"] = max(deltas, default=0.0)


def _precision(row: dict[str, Any]) -> str:
    """The dtype cell: 'float32', or 'float32+int8' for quantized linear layers (older results have no quantize)."""
    quantize = row.get("quantize", "none")
    return row["dtype"] if quantize == "none" else f"{row['dtype']}+{quantize}"


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the settings."""
    head = (
        "| setting | threads | dtype | load s | first query s | further query s (mean) | bare prefill s | "
        "first / bare | peak RSS GB | same top-10 fused / attention | max nDCG@10 delta |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    n = len(rows[0]["top10_fused"])
    for r in rows:
        further = sum(r["further_query_s"]) / max(len(r["further_query_s"]), 1)
        lines.append(
            f"| {r['setting']} | {r['threads']} | {_precision(r)} | {r['load_s']:.1f} | {r['first_query_s']:.1f} | "
            f"{further:.2f} | {r['bare_prefill_s']:.1f} | {r['first_query_s'] / r['bare_prefill_s']:.2f} | "
            f"{r['peak_rss_gb']:.2f} | {r['same_top10_fused']}/{n} / {r['same_top10_attention']}/{n} | "
            f"{r['max_ndcg_delta']:.4f} |"
        )
    return head + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="a named model, hub id or path")
    parser.add_argument("--settings", default="default,t1,t2,bf16", help="comma-separated (see the module doc)")
    parser.add_argument("--questions", type=int, default=5, help="questions asked of the paper, one after another")
    parser.add_argument("--tokens", type=int, default=5000, help="pick the COVID-QA paper nearest this length")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per setting")
    parser.add_argument("--out", default="benchmarks/results/model_settings.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = [s.strip() for s in args.settings.split(",")]
    for setting in settings:
        setting_parts(setting)
    doc, questions = _paper(args.tokens, args.questions)
    rows = []
    for setting in settings:
        row = run_setting(args.model, setting, doc, questions, args.timeout)
        if row is None:
            return 1
        logger.info("%s: %s", setting, {k: v for k, v in row.items() if not k.startswith("top10")})
        rows.append(row)
    compare(rows)
    print(table(rows))
    meta = run_metadata()
    meta["command"] = command_line("benchmarks.model_settings", argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "model": args.model, "results": rows}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
