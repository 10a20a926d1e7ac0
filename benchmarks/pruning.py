"""Context pruning benchmark: what survives when a long document is cut to 10/25/50 % of its tokens.

    python -m benchmarks.pruning                    # 4 documents per set at 6k words, 2 per set at 20k words
    python -m benchmarks.pruning --quick            # 1 short document per set (CI smoke run)
    python -m benchmarks.pruning --readme README.md # also rewrite the README table between the pruning markers

Documents come from ``shared_core.evaluation`` as in the quality benchmark (HotpotQA questions buried among other
questions' paragraphs; bAbI qa1/qa2 stories among renamed facts of other stories), held-out questions (offset 50 on).
Each document is scored once and every budget is derived from that one scoring. Methods, all under the same budget,
the same tokenizer (the scoring model's) and the same marker:

- ``attnret``: ``shared_core.tasks.pruning`` on the default retriever's hits (fused attention + dense + BM25, entity
  background);
- ``head``: the first tokens of the document (token-exact truncation at the budget);
- ``bm25`` / ``dense``: the best sentences by BM25 / by MiniLM similarity, kept in document order with the same
  selection code (no entity background).

Metrics: evidence recall (share of gold sentences whose text lies wholly inside the pruned text), answer presence
(share of questions whose answer string still occurs, case-insensitive, among those whose document contains it at
all; HotpotQA yes/no answers never do) and seconds per document (scoring once + pruning at that budget).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from benchmarks.report import command_line, markers, provenance_line, run_metadata, update_readme_section
from shared_core.document import Hit, Unit
from shared_core.evaluation import LabelledExample, load_examples, shared_data_dir
from shared_core.tasks.pruning import KeptSpan, PrunedDocument, TokenCounter, prune_hits, prune_scores
from shared_core.views.lexical import bm25_scores

logger = logging.getLogger("benchmarks.pruning")

README_START, README_END = markers("pruning")
SECTION = "pruning"
DEFAULT_TASKS = ("hotpotqa", "babi-qa1", "babi-qa2")
DEFAULT_SIZES = ((6000, 4), (20000, 2))
"""(words, documents per set): CPU time bounds the run (a 20k-word document costs minutes per attention pass)."""
QUICK_SIZES = ((500, 1),)
BUDGETS = (0.10, 0.25, 0.50)
METHODS = ("attnret", "head", "bm25", "dense")
EVAL_OFFSET = 50
GOAL_BUDGET, GOAL_RECALL = 0.25, 0.90


def head_truncation(text: str, budget: int, counter: TokenCounter) -> PrunedDocument:
    """The longest prefix of `text` of at most `budget` tokens (cut at a token boundary, re-counted to be sure)."""
    enc = counter.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = enc["offset_mapping"]
    total = len(offsets)
    n = min(budget, total)
    while n > 0:
        end = int(offsets[n - 1][1])
        kept = counter.count(text[:end])
        if kept <= budget:
            break
        n -= 1
    end = int(offsets[n - 1][1]) if n else 0
    span = KeptSpan(0, end, text[:end], "direct")
    return PrunedDocument(
        text=text[:end],
        spans=(span,) if end else (),
        tokens_kept=counter.count(text[:end]),
        tokens_original=total,
        original_length=len(text),
        budget_tokens=budget,
        status="whole" if end == len(text) else "truncated",
        pieces=((0, end),) if end else (),
    )


def evidence_recall(pruned: PrunedDocument, example: LabelledExample) -> float:
    """Share of gold spans lying wholly inside one kept piece of the original text."""
    gold = [(g.start, g.end) for g in example.gold if g.document_index == 0]
    if not gold:
        return float("nan")
    kept = sum(any(s <= gs and ge <= e for s, e in pruned.pieces) for gs, ge in gold)
    return kept / len(gold)


def answer_present(pruned: PrunedDocument, example: LabelledExample) -> bool | None:
    """Whether the answer string survives (None when the document never contains it, e.g. yes/no answers)."""
    answer = (example.answer or "").strip().lower()
    if not answer or answer not in example.documents[0].lower():
        return None
    return answer in pruned.text.lower()


def run_benchmark(
    tasks: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    budgets: Sequence[float] = BUDGETS,
    *,
    seed: int = 0,
    offset: int = EVAL_OFFSET,
    progress: bool = True,
    cache: Path | None = None,
) -> dict[str, Any]:
    """Build the documents, score each once, prune it at every budget with every method; JSON-ready results."""
    from shared_core import AttentionRetriever

    retriever = AttentionRetriever()
    retriever.warm_up()
    retriever.dense.warm_up()
    counter = TokenCounter(retriever.model.tokenizer)
    jobs = []
    for words, n in sizes:  # round-robin over the sets, so a cut-short run (see --cache) stays balanced
        per_task = {t: load_examples(t, n=n, target_words=words, seed=seed, offset=offset) for t in tasks}
        jobs += [(t, words, per_task[t][i]) for i in range(n) for t in tasks if i < len(per_task[t])]
    records: list[dict[str, Any]] = []
    warm = "Mary went to the kitchen. She took the milk there.\n\nJohn went to the garden."
    retriever.score_units("Where is the milk?", warm)  # spaCy, dense and first-call costs stay out of the timings
    for task, words, example in tqdm(jobs, desc="documents", disable=not progress):
        doc = example.documents[0]
        units, hits, lexical, dense, scored = _scored(retriever, example, cache)
        total = counter.count(doc)
        for share in budgets:
            budget = max(1, int(total * share))
            for method in METHODS:
                t0 = time.perf_counter()
                if method == "attnret":
                    pruned = prune_hits(doc, units, hits, budget, counter)
                elif method == "head":
                    pruned = head_truncation(doc, budget, counter)
                else:
                    scores = lexical if method == "bm25" else dense
                    pruned = prune_scores(doc, units, [float(s) for s in scores], budget, counter, entity_share=0.0)
                elapsed = float(scored[method]) + time.perf_counter() - t0
                if pruned.tokens_kept > budget:
                    raise RuntimeError(f"{method} exceeded the budget on {example.id}: {pruned.tokens_kept} > {budget}")
                records.append(
                    {
                        "id": example.id,
                        "task": task,
                        "words": words,
                        "budget": share,
                        "budget_tokens": budget,
                        "tokens_original": total,
                        "method": method,
                        "tokens_kept": pruned.tokens_kept,
                        "evidence_recall": evidence_recall(pruned, example),
                        "answer_present": answer_present(pruned, example),
                        "sec_per_doc": elapsed,
                    }
                )
    results = aggregate(records, tasks, [w for w, _ in sizes], budgets)
    settings = {
        "tasks": list(tasks),
        "sizes": [list(s) for s in sizes],
        "budgets": list(budgets),
        "methods": list(METHODS),
        "seed": seed,
        "offset": offset,
    }
    return {"meta": run_metadata(), "settings": settings, "results": results, "per_document": records}


def _scored(retriever: Any, example: LabelledExample, cache: Path | None) -> tuple[Any, ...]:
    """Units, attnret hits, BM25 and dense scores of an example's document, and each method's scoring seconds.

    With `cache`, they are stored per example (JSON) and read back on later runs, so a change to the selection can
    be measured without scoring again (the stored seconds are those of the run that scored).
    """
    doc = example.documents[0]
    path = cache / f"{example.id}-{len(doc)}.json" if cache is not None else None
    if path is not None and path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        units = [Unit(**u) for u in data["units"]]
        hits = [Hit(**h) for h in data["hits"]]
        if [(u.start, u.end) for u in units] == [(u.start, u.end) for u in retriever.units(doc)]:
            return units, hits, np.asarray(data["bm25"]), np.asarray(data["dense"]), data["seconds"]
    units = retriever.units(doc)
    texts = [u.text for u in units]
    t0 = time.perf_counter()
    hits = retriever.score_units(example.query, doc)
    seconds = {"attnret": time.perf_counter() - t0}
    t0 = time.perf_counter()
    lexical = bm25_scores(example.query, texts)
    seconds["bm25"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dense = np.asarray(retriever.dense.score(example.query, texts), dtype=np.float64)
    seconds["dense"] = time.perf_counter() - t0
    seconds["head"] = 0.0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "units": [dataclasses.asdict(u) for u in units],
            "hits": [h.to_dict() for h in hits],
            "bm25": [float(x) for x in lexical],
            "dense": [float(x) for x in dense],
            "seconds": seconds,
        }
        path.write_text(json.dumps(data), encoding="utf-8")
    return units, hits, lexical, dense, seconds


def aggregate(
    records: Sequence[dict[str, Any]], tasks: Sequence[str], words: Sequence[int], budgets: Sequence[float]
) -> list[dict[str, Any]]:
    """Mean metrics per (set, length, budget, method), then the macro average over sets ("overall")."""
    rows = []
    for w in words:
        for share in budgets:
            for method in METHODS:
                per_task = []
                for task in [*tasks, "overall"]:
                    if task == "overall":
                        parts = [r for r in per_task if r["n"]]
                        row = {"task": "overall", "words": w, "budget": share, "method": method}
                        row["n"] = sum(r["n"] for r in parts)
                        for key in ("evidence_recall", "answer_presence", "kept_share", "sec_per_doc"):
                            values = [r[key] for r in parts if r[key] is not None]
                            row[key] = float(np.mean(values)) if values else None
                        row["n_answer"] = sum(r["n_answer"] for r in parts)
                        rows.append(row)
                        continue
                    sel = [
                        r
                        for r in records
                        if r["task"] == task and r["words"] == w and r["budget"] == share and r["method"] == method
                    ]
                    answers = [r["answer_present"] for r in sel if r["answer_present"] is not None]
                    recalls = [r["evidence_recall"] for r in sel if not np.isnan(r["evidence_recall"])]
                    row = {
                        "task": task,
                        "words": w,
                        "budget": share,
                        "method": method,
                        "n": len(sel),
                        "evidence_recall": float(np.mean(recalls)) if recalls else None,
                        "answer_presence": float(np.mean(answers)) if answers else None,
                        "n_answer": len(answers),
                        "kept_share": float(np.mean([r["tokens_kept"] / r["tokens_original"] for r in sel]))
                        if sel
                        else None,
                        "sec_per_doc": float(np.mean([r["sec_per_doc"] for r in sel])) if sel else None,
                    }
                    per_task.append(row)
                    rows.append(row)
    return rows


def goal(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's goal: attnret keeps >= 90 % of the gold evidence at 25 % and beats every baseline at every budget.

    "Beats" = strictly higher overall evidence recall than each baseline at each (length, budget); `losses` lists
    the single sets where a baseline keeps more.
    """
    rows = [r for r in results["results"] if r["task"] == "overall"]
    at_goal = {
        r["words"]: r["evidence_recall"] for r in rows if r["method"] == "attnret" and r["budget"] == GOAL_BUDGET
    }
    margins = []
    for r in rows:
        if r["method"] != "attnret":
            continue
        others = [
            o["evidence_recall"] or 0.0
            for o in rows
            if o["words"] == r["words"] and o["budget"] == r["budget"] and o["method"] != "attnret"
        ]
        margins.append(
            {"words": r["words"], "budget": r["budget"], "margin": (r["evidence_recall"] or 0) - max(others)}
        )
    cells = {(r["task"], r["words"], r["budget"], r["method"]): r["evidence_recall"] for r in results["results"]}
    losses = [
        {"task": t, "words": w, "budget": b, "method": m, "recall": v, "attnret": cells.get((t, w, b, "attnret"))}
        for (t, w, b, m), v in cells.items()
        if m != "attnret" and v is not None and v > (cells.get((t, w, b, "attnret")) or 0.0)
    ]
    return {
        "losses": losses,
        "recall_at_25": at_goal,
        "recall_goal_met": all(v is not None and v >= GOAL_RECALL for v in at_goal.values()),
        "margins": margins,
        "beats_every_baseline": all(m["margin"] > 0 for m in margins),
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(results: dict[str, Any]) -> str:
    """Evidence recall and answer presence per set, length and budget (best per row in bold), then time."""
    rows = results["results"]
    groups = list(dict.fromkeys((r["task"], r["words"], r["budget"]) for r in rows))
    head = " | ".join(f"{m} R / A" for m in METHODS)
    lines = [
        "Evidence recall R (share of gold sentences kept whole) / answer presence A (share of answers still in the "
        "text, n_A questions whose document contains the answer); best R per row in bold.",
        "",
        f"| set | words | budget | n | n_A | {head} |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(METHODS),
    ]
    for task, w, share in groups:
        cells = {r["method"]: r for r in rows if (r["task"], r["words"], r["budget"]) == (task, w, share)}
        best = max((c["evidence_recall"] for c in cells.values() if c["evidence_recall"] is not None), default=None)
        shown = []
        for m in METHODS:
            c = cells.get(m)
            if c is None:
                shown.append("–")
                continue
            recall = _fmt(c["evidence_recall"])
            if c["evidence_recall"] is not None and c["evidence_recall"] == best:
                recall = f"**{recall}**"
            shown.append(f"{recall} / {_fmt(c['answer_presence'])}")
        first = cells[METHODS[0]]
        name = f"**{task}**" if task == "overall" else task
        lines.append(f"| {name} | {w} | {share:.0%} | {first['n']} | {first['n_answer']} | " + " | ".join(shown) + " |")
    times = [r for r in rows if r["task"] == "overall"]
    lines += ["", "Seconds per document (scoring once + pruning at that budget), mean over sets:", ""]
    lines += ["| words | budget | " + " | ".join(METHODS) + " |", "|---:|---:|" + "---:|" * len(METHODS)]
    for w, share in dict.fromkeys((r["words"], r["budget"]) for r in times):
        cells = {r["method"]: r for r in times if (r["words"], r["budget"]) == (w, share)}
        lines.append(
            f"| {w} | {share:.0%} | "
            + " | ".join(_fmt(cells[m]["sec_per_doc"], 3) for m in METHODS if m in cells)
            + " |"
        )
    g = goal(results)
    at = ", ".join(f"{w} words: {_fmt(v)}" for w, v in g["recall_at_25"].items())
    worst = min(g["margins"], key=lambda m: m["margin"]) if g["margins"] else None
    lines += [
        "",
        f"Goal (attnret keeps >= {GOAL_RECALL:.0%} of the gold evidence at {GOAL_BUDGET:.0%}): "
        f"{'met' if g['recall_goal_met'] else 'not met'} ({at}). Beats every baseline at every budget (overall "
        f"evidence recall): {'yes' if g['beats_every_baseline'] else 'no'}"
        + (
            f"; smallest margin {worst['margin']:+.2f} at {worst['words']} words, {worst['budget']:.0%}."
            if worst
            else "."
        ),
    ]
    if g["losses"]:
        lines[-1] += (
            " Sets where a baseline keeps more: "
            + "; ".join(
                f"{x['task']} {x['words']} words {x['budget']:.0%}: {x['method']} {x['recall']:.2f} "
                f"vs {x['attnret']:.2f}"
                for x in g["losses"]
            )
            + "."
        )
    else:
        lines[-1] += " No single set where a baseline keeps more."

    return "\n".join(lines)


def readme_section(results: dict[str, Any]) -> str:
    """The README block: provenance, the command that reproduces it, the tables."""
    command = results["settings"].get("command", "python -m benchmarks.pruning")
    return f"{provenance_line(results['meta'])} Reproduce: `{command}`\n\n{markdown_table(results)}"


def _sizes(text: str) -> list[tuple[int, int]]:
    """'6000:4,20000:2' -> [(6000, 4), (20000, 2)]."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        words, _, n = part.partition(":")
        out.append((int(words), int(n or 1)))
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` shrinks the run to one short document per set."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.pruning", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one 500-word document per set (unless --sizes is given)")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated: hotpotqa, babi-qaN")
    p.add_argument("--sizes", default=None, help="words:documents pairs, default 6000:4,20000:2")
    p.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS), help="shares of the document's tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offset", type=int, default=EVAL_OFFSET, help="questions of each set left out (head detection)")
    p.add_argument("--out", default="benchmarks/results/pruning.json", help="JSON results path")
    p.add_argument("--readme", default=None, help="README to update between the pruning markers")
    p.add_argument("--cache", default=None, help="folder keeping each document's scores, reused by later runs")
    p.add_argument("--render", default=None, help="only re-render the tables of an earlier results JSON (no run)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = ",".join(f"{w}:{n}" for w, n in (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, write the JSON and print (and optionally store in the README) the Markdown tables."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.render:
        results = json.loads(Path(args.render).read_text(encoding="utf-8"))
        results["goal"] = goal(results)
        return _publish(results, args)
    if shared_data_dir() is None:
        logger.error("shared data not found: set ATTNRET_DATA to the folder holding babi/ and hotpotqa/")
        return 2
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    if not budgets or any(not 0 < b < 1 for b in budgets):
        logger.error("--budgets must be shares strictly between 0 and 1, e.g. 0.1,0.25,0.5")
        return 2
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    results = run_benchmark(
        tasks,
        _sizes(args.sizes),
        budgets,
        seed=args.seed,
        offset=args.offset,
        progress=not args.no_progress,
        cache=Path(args.cache) if args.cache else None,
    )
    results["settings"]["command"] = command_line("benchmarks.pruning", argv)
    results["goal"] = goal(results)
    return _publish(results, args)


def _publish(results: dict[str, Any], args: argparse.Namespace) -> int:
    """Write the JSON to --out, print the tables and (with --readme) rewrite the README section."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    logger.info("wrote %s", out)
    section = readme_section(results)
    if args.readme:
        update_readme_section(args.readme, section, section=SECTION)
        logger.info("updated the pruning section of %s", args.readme)
    sys.stdout.write(section + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
