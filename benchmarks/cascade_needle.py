"""Needle benchmark for the cascading KV cache: a bAbI qa2 story inside HotpotQA filler, beyond the window.

For every (document size, depth, story) the story's facts (all of them up to the question, in order; the gold
units are its supporting facts) are inserted at 10/50/90 % depth of HotpotQA paragraphs; units are sentences.
Each method scores every unit (N/A-calibrated attention of the retriever's heads: the shipped QR-head set of the
model by default, `--heads all` for every head of the second half of the layers; mean over the unit's tokens) and
we report hit@5 (a supporting fact in the top 5), recall@5, time and peak memory per document:

- cascade      sinks + N sub-caches of W slots, resident scoring (the query sees every chunk while it is resident)
- cascade_end  the same cache, query only at the end (baseline for the scoring decision)
- streaming    StreamingLLM: sinks + the last N*W tokens, query at the end
- truncate     plain truncation: the first tokens that fit the model window (with the query) read with full
               attention, the rest unscored
- full         reference: the whole prompt with full attention (only where it fits the model window)

cascade, cascade_end and streaming hold the same number of KV slots (S + N*W). Peak memory is the RSS high-water
mark above the level before the document (CPU: the kernel's VmHWM, reset per document) or the CUDA allocator's
peak.

    python -m benchmarks.cascade_needle --quick             # a few minutes on 2 CPU cores
    python -m benchmarks.cascade_needle                     # 8k/32k/100k tokens, paper-size cache (GPU advised)
    python -m benchmarks.cascade_needle --stories 1 --methods cascade streaming truncate   # the README's CPU run
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import random
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from benchmarks.report import command_line, publish, run_metadata
from shared_core.config import AttentionConfig, CascadeConfig, ModelConfig
from shared_core.engine.capture import load_model
from shared_core.engine.cascade_scoring import cascade_token_scores
from shared_core.engine.heads import HeadSelection, select_heads
from shared_core.engine.prompt import PromptLayout
from shared_core.evaluation import shared_data_dir
from shared_core.models.family import text_config
from shared_core.models.loading import model_id

logger = logging.getLogger("cascade_needle")

METHODS = ("full", "cascade", "cascade_end", "streaming", "truncate")


@dataclass
class Story:
    facts: list[str]
    question: str
    support: list[int]  # indices into facts


@dataclass
class NeedleDoc:
    text: str
    units: list[tuple[int, int]]  # char spans
    gold: set[int]  # unit indices
    question: str


def load_stories(path: Path, limit: int, seed: int) -> list[Story]:
    """qa2 questions with every story fact before them; the supporting facts are the gold."""
    stories: list[Story] = []
    facts: dict[int, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        num_s, _, text = line.partition(" ")
        num = int(num_s)
        if num == 1:
            facts = {}
        parts = [p.strip() for p in re.split(r"\t|\|", text)]
        if len(parts) >= 3 and parts[0].endswith("?"):
            ids = sorted(facts)
            stories.append(Story([facts[i] for i in ids], parts[0], [ids.index(int(x)) for x in parts[2].split()]))
        else:
            facts[num] = text.strip()
    random.Random(seed).shuffle(stories)
    return stories[:limit]


def load_filler(path: Path) -> list[list[str]]:
    """HotpotQA paragraphs as lists of sentences (distinct paragraphs only)."""
    seen: set[str] = set()
    paras: list[list[str]] = []
    for ex in json.loads(path.read_text(encoding="utf-8")):
        for title, sents in ex["context"]:
            sents = [s.strip() for s in sents if s.strip()]
            if title not in seen and sents:
                seen.add(title)
                paras.append(sents)
    return paras


def build_doc(story: Story, filler: list[list[str]], tokens: int, depth: float, tok: Any, seed: int) -> NeedleDoc:
    """Filler paragraphs until ~`tokens` tokens, the story's facts inserted at `depth` (one unit per sentence)."""
    rng = random.Random(seed)
    order = list(range(len(filler)))
    rng.shuffle(order)
    paras: list[list[str]] = []
    count = 0
    i = 0
    while count < tokens:
        p = filler[order[i % len(order)]]
        i += 1
        paras.append(p)
        count += len(tok(" ".join(p), add_special_tokens=False)["input_ids"]) + 1
    cumulative = np.cumsum([len(" ".join(p)) for p in paras])
    at = int(np.searchsorted(cumulative, depth * cumulative[-1]))
    paras.insert(at, list(story.facts))
    text_parts: list[str] = []
    units: list[tuple[int, int]] = []
    gold: set[int] = set()
    pos = 0
    for pi, p in enumerate(paras):
        for si, s in enumerate(p):
            if si:
                text_parts.append(" ")
                pos += 1
            if pi == at and si in story.support:
                gold.add(len(units))
            units.append((pos, pos + len(s)))
            text_parts.append(s)
            pos += len(s)
        text_parts.append("\n")
        pos += 1
    return NeedleDoc("".join(text_parts), units, gold, story.question)


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def pin_malloc() -> None:
    """glibc: serve every block >= 256 KiB by mmap (fixed threshold), so freed tensors leave the RSS and a later
    method's peak is not hidden by memory an earlier one left in the heap."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD


def _vm_hwm() -> int | None:
    """This process's peak RSS in bytes since the last reset (Linux /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return _vm_hwm() is not None


class PeakMemory:
    """Peak RSS or CUDA peak allocation above the level at entry, in bytes.

    On Linux the kernel's own high-water mark is reset and read (exact, no cost); elsewhere a thread samples the
    RSS every 5 ms (which takes some of the GIL from the measured code).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        libc = _libc()
        if libc is not None:
            libc.malloc_trim(0)
        self._proc = psutil.Process()
        self._base = self._proc.memory_info().rss
        self._high = self._base
        if not _reset_hwm():
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._high = max(self._high, self._proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self._high = max(self._high, self._proc.memory_info().rss, _vm_hwm() or 0)
        self.peak = self._high - self._base


def method_config(method: str, base: CascadeConfig, n_tokens: int, window: int) -> CascadeConfig:
    """The cache each method uses: the bounded ones hold base.capacity slots, truncate the model `window`."""
    if method == "cascade":
        return base
    if method == "full":  # one window holding every token: nothing is evicted, prefill in the same strides
        return base.model_copy(update={"sink_tokens": 0, "cascades": 1, "window": n_tokens, "scoring": "end"})
    if method == "cascade_end":
        return base.model_copy(update={"scoring": "end"})
    if method == "streaming":
        return base.model_copy(update={"cascades": 1, "window": base.cascades * base.window, "scoring": "end"})
    # truncate: one plain forward over the first `window` tokens (what a user without the cascade gets)
    return base.model_copy(
        update={"sink_tokens": 0, "cascades": 1, "window": window, "stride": window, "scoring": "end"}
    )


def unit_scores(token: np.ndarray, scored: np.ndarray, offsets: np.ndarray, units: list[tuple[int, int]]) -> np.ndarray:
    """Mean token score per unit; units without any scored token rank last."""
    out = np.full(len(units), -np.inf)
    starts, ends = offsets[:, 0], offsets[:, 1]
    for u, (s, e) in enumerate(units):
        lo, hi = int(np.searchsorted(ends, s, side="right")), int(np.searchsorted(starts, e, side="left"))
        if hi > lo and scored[lo:hi].any():
            sel = scored[lo:hi]
            out[u] = float(token[lo:hi][sel].mean())
    return out


def layout_limit(model: Any) -> int:
    """The model window in tokens."""
    cfg = text_config(model)
    return int(getattr(cfg, "max_position_embeddings", 0) or 2048)


def head_mask(selection: HeadSelection, num_heads: int) -> torch.Tensor:
    """[layers, heads] boolean mask of the selected heads, layers in `selection.layers` order."""
    mask = torch.zeros(len(selection.layers), num_heads, dtype=torch.bool)
    for i, layer in enumerate(selection.layers):
        heads = selection.per_layer[layer]
        mask[i, list(heads) if heads is not None else slice(None)] = True
    return mask


def run_one(
    model: Any, layout: PromptLayout, doc: NeedleDoc, method: str, base: CascadeConfig, selection: HeadSelection
) -> dict[str, Any] | None:
    """Score one document with one method; returns the metrics row."""
    dt = layout.document(doc.text)
    q = layout.query(doc.question, "query")
    na = layout.query("N/A", "query")
    ids = torch.tensor(dt.ids)
    window = layout_limit(model) - max(len(q.ids), len(na.ids))
    cfg = method_config(method, base, len(dt.ids), window)
    if method == "full" and len(dt.ids) > window:
        return None
    if method == "truncate":
        ids = ids[:window]
    layers = selection.layers
    queries = [(torch.tensor(q.ids), torch.tensor(q.rows)), (torch.tensor(na.ids), torch.tensor(na.rows))]
    device = next(model.parameters()).device
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        res = cascade_token_scores(model, ids, queries, layers, cfg)
        seconds = time.perf_counter() - t0
    n_doc = len(dt.offsets)
    raw = torch.zeros(2, len(layers), res.scores.shape[2], len(dt.ids))
    raw[..., : res.scores.shape[-1]] = res.scores
    doc_part = raw[..., dt.doc_start : dt.doc_start + n_doc][:, head_mask(selection, raw.shape[2])]  # [2, heads, n]
    scored = (doc_part[0].sum(dim=0) > 0).numpy()
    token = (doc_part[0] - doc_part[1]).mean(dim=0).numpy()
    scores = unit_scores(token, scored, dt.offsets, doc.units)
    ranking = np.argsort(-scores, kind="stable")
    top5 = set(ranking[:5].tolist())
    ranks = [int(np.where(ranking == g)[0][0]) + 1 for g in doc.gold]
    return {
        "method": method,
        "prompt_tokens": len(dt.ids),
        "units": len(doc.units),
        "hit5": float(bool(top5 & doc.gold)),
        "recall5": len(top5 & doc.gold) / len(doc.gold),
        "best_gold_rank": min(ranks),
        "gold_scored": bool(np.isfinite(scores[list(doc.gold)]).any()),
        "scored_fraction": float(scored.mean()),
        "seconds": seconds,
        "peak_mb": mem.peak / 2**20,
        "estimated_mb": res.estimated_bytes / 2**20,
        "chunks": res.n_chunks,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small documents and cache (a few minutes on 2 CPU cores)")
    ap.add_argument("--sizes", type=int, nargs="*", help="document sizes in tokens")
    ap.add_argument("--depths", type=float, nargs="*", default=[0.1, 0.5, 0.9])
    ap.add_argument("--stories", type=int, default=None, help="stories per (size, depth)")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    ap.add_argument("--heads", default="auto", help="'auto' (the model's shipped QR heads), 'all', or a head-set file")
    ap.add_argument("--sinks", type=int, default=None, help="sink tokens S (default 64; 16 with --quick)")
    ap.add_argument("--cascades", type=int, default=None, help="sub-caches N (default 4)")
    ap.add_argument("--window", type=int, default=None, help="slots per sub-cache W (default 1024; 64 with --quick)")
    ap.add_argument("--stride", type=int, default=None, help="prefill chunk (default 1024; 256 with --quick)")
    ap.add_argument(
        "--data", type=Path, default=None, help="the shared data folder (default: $ATTNRET_DATA or ../shared/data)"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-seconds", type=float, default=None, help="stop starting new documents after this")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--readme", default=None, help="README whose cascade section is rewritten with the table")
    ap.add_argument(
        "--append",
        action="store_true",
        help="add these rows to those already in --out (same cache settings); rows measured again replace the old",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all, at most 16)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), args.threads or 16)))
    pin_malloc()

    if args.quick:
        sizes = args.sizes or [2000, 4000]
        base = CascadeConfig(sink_tokens=16, cascades=4, window=64, stride=256)
        n_stories = args.stories or 1
    else:
        sizes = args.sizes or [8000, 32000, 100000]
        base = CascadeConfig(sink_tokens=64, cascades=4, window=1024, stride=1024)
        n_stories = args.stories or 3
    overrides = {"sink_tokens": args.sinks, "cascades": args.cascades, "window": args.window, "stride": args.stride}
    base = CascadeConfig.model_validate({**base.model_dump(), **{k: v for k, v in overrides.items() if v is not None}})
    args.data = args.data or shared_data_dir() or Path("../shared/data")
    babi = args.data / "babi" / "qa2_two-supporting-facts_test.txt"
    hotpot = args.data / "hotpotqa" / "hotpot_dev_distractor_100.json"
    if not babi.is_file() or not hotpot.is_file():
        logger.error("shared data not found under %s (need babi/ and hotpotqa/)", args.data)
        return 2
    model_config = ModelConfig(device=args.device)
    loaded = load_model(model_config)
    model, tok = loaded.model, loaded.tokenizer
    layout = PromptLayout(tok, "auto", model_config.instruction)
    selection = select_heads(
        AttentionConfig(heads=args.heads), loaded.shape.num_layers, loaded.shape.num_heads, model_id(model_config)
    )
    warm = torch.tensor(layout.document("Warm-up text. " * 40).ids)
    q0 = layout.query("warm up", "query")
    warm_queries = [(torch.tensor(q0.ids), torch.tensor(q0.rows))]
    cascade_token_scores(model, warm, warm_queries, selection.layers, base)  # first-call costs
    stories = load_stories(babi, n_stories, args.seed)
    filler = load_filler(hotpot)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    stopped_early = False
    for size in sizes:
        for depth in args.depths:
            for si, story in enumerate(stories):
                if args.max_seconds is not None and time.perf_counter() - started > args.max_seconds:
                    stopped_early = True
                    break
                doc = build_doc(story, filler, size, depth, tok, seed=args.seed * 1000 + si)
                for method in args.methods:
                    row = run_one(model, layout, doc, method, base, selection)
                    if row is None:
                        continue
                    row.update(size=size, depth=depth, story=si)
                    logger.info("%s", row)
                    rows.append(row)
    if args.append and args.out is not None and args.out.is_file():
        earlier = json.loads(args.out.read_text(encoding="utf-8"))
        if earlier.get("cache") != base.model_dump(mode="json") or earlier.get("heads") != selection.source:
            logger.error("%s was measured with another cache or head set; not appending", args.out)
            return 2
        redone = {(r["size"], r["depth"], r["story"], r["method"]) for r in rows}
        rows = [r for r in earlier["rows"] if (r["size"], r["depth"], r["story"], r["method"]) not in redone] + rows
    summary = summarise(rows)
    result = {
        "meta": {**run_metadata(), "device": str(loaded.device)},
        "model": loaded.name,
        "device": str(loaded.device),
        "cache": base.model_dump(mode="json"),
        "capacity": base.capacity,
        "heads": selection.source,
        "layers": selection.layers,
        "stories": n_stories,
        "stopped_early": stopped_early,
        "rows": rows,
        "summary": summary,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    command = command_line("benchmarks.cascade_needle", argv)
    publish("cascade", result["meta"], command, markdown(summary, base), str(loaded.device), args.readme)
    return 0


MEAN_KEYS = ("hit5", "recall5", "best_gold_rank", "seconds", "peak_mb")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean metrics per (size, depth, method)."""
    groups: dict[tuple[int, float, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["size"], r["depth"], r["method"]), []).append(r)
    out = []
    for (size, depth, method), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], METHODS.index(kv[0][2]))
    ):
        out.append(
            {
                "size": size,
                "depth": depth,
                "method": method,
                "n": len(rs),
                "prompt_tokens": int(np.mean([r["prompt_tokens"] for r in rs])),
                "units": int(np.mean([r["units"] for r in rs])),
                **{k: float(np.mean([r[k] for r in rs])) for k in MEAN_KEYS},
                "scored_fraction": float(np.mean([r["scored_fraction"] for r in rs])),
                "gold_scored": float(np.mean([_gold_scored(r) for r in rs])),
            }
        )
    return out


def _gold_scored(row: dict[str, Any]) -> bool:
    """Whether any supporting fact got a score (rows written before the field existed: unscored units rank after
    every scored one, so a best rank past the scored share of the units means the gold was never scored)."""
    if "gold_scored" in row:
        return bool(row["gold_scored"])
    return row["best_gold_rank"] <= round(row["units"] * row["scored_fraction"])


def markdown(summary: list[dict[str, Any]], base: CascadeConfig) -> str:
    """The results table."""
    head = (
        f"Cache: S={base.sink_tokens}, N={base.cascades}, W={base.window}, stride={base.stride} "
        f"({base.capacity} slots per layer for cascade and streaming; truncate reads the model window)\n\n"
        "| tokens | depth | method | n | hit@5 | recall@5 | best gold rank | scored | s/doc | peak MB |\n"
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in summary:
        rank = f"{r['best_gold_rank']:.0f} of {r['units']}" if r.get("gold_scored", 1.0) > 0 else "not scored"
        lines.append(
            f"| {r['prompt_tokens']} | {r['depth']:.0%} | {r['method']} | {r['n']} | {r['hit5']:.2f} | "
            f"{r['recall5']:.2f} | {rank} | {r['scored_fraction']:.2f} | {r['seconds']:.1f} | {r['peak_mb']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
