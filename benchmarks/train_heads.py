"""Trained head weights against detected QR heads (issue 28): attention-alone nDCG@10, held-in validation and held-out.

    flock /tmp/attnret-heavy.lock python -m benchmarks.train_heads --capture-only     # the model runs here, once
    python -m benchmarks.train_heads                                                  # training from the cache

Every head's per-unit score is captured once per question (`shared_core.training.head_features`, cached under
``~/.cache/attnret/train-features``) for every head of the deepest band's layers; each band (``--bands``) uses
the rows of its layers. Held-in: the held-in papers of COVID-QA and meetings of QMSum (``--real``;
``--held-in-per-doc`` questions each, 4 unless given, cut at ``--held-in-max-words``, else ``--real-max-words``)
and the first questions (offset 0) of bAbI qa1, qa2 and HotpotQA at ``--words``.
Held-out: COVID-QA's first ``--out-docs`` held-out papers and QMSum's first ``--qmsum-out-docs`` held-out meetings
(cut at ``--real-max-words``, as the README measures them) and later built questions (offset 50).
``--config`` picks the model and dtype (e.g. ``benchmarks/results/models/qwen1.5b_bf16.yaml``). Training data:
``covidqa`` (its held-in papers only, the issue's probe) and ``mix`` (every held-in set). The held-in examples are
split by document into train and validation (`split_by_document`, the command's split); heads are chosen and
weights early-stopped on validation only, and held-out documents are only ever measured.

Rows per (training data, band): the shipped head set (with its own weights, if it has them), the 16 heads
detected on the train split (equal weights), every head of the band averaged, free weights on every head (LSEPair),
and per objective the trained top-k (detection-score selection; ``l1`` selection for LSEPair). Results:
``benchmarks/results/training/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.report import command_line, run_metadata
from shared_core.engine.heads import load_head_file, shipped_head_sets
from shared_core.evaluation import load_examples, load_real
from shared_core.models.loading import model_id
from shared_core.training.data_options import config_of
from shared_core.training.head_features import ExampleFeatures, SourcedExample, capture_features, head_names
from shared_core.training.head_set_file import provenance
from shared_core.training.head_training import TrainingResult, capture_retriever
from shared_core.training.objectives import OBJECTIVES
from shared_core.training.weights import (
    Batch,
    TrainSettings,
    fit_weights,
    head_ndcg,
    ndcg_at_k,
    select_heads,
    split_by_document,
)

logger = logging.getLogger("benchmarks.train_heads")

OUT_DIR = Path("benchmarks/results/training")
BUILT = ("babi-qa1", "babi-qa2", "hotpotqa")


REAL_OUT = {"covidqa": ("out_docs", 3), "qmsum": ("qmsum_out_docs", 4)}
"""Per real set: the option giving its held-out documents, and questions per held-out document (COVID-QA: more
papers, fewer questions)."""


def example_sets(args: argparse.Namespace) -> dict[str, dict[str, list[SourcedExample]]]:
    """{"held-in"|"held-out": {set: examples}}: held-in papers/meetings and first questions; held-out documents and
    later questions."""
    cut = args.real_max_words
    held_in_cut = cut if args.held_in_max_words is None else (args.held_in_max_words or None)
    sets: dict[str, dict[str, list[SourcedExample]]] = {"held-in": {}, "held-out": {}}
    for name in args.real.split(",") if args.real else []:
        held_in = load_real(
            name,
            split="held-in",
            n_documents=args.docs,
            per_document=args.held_in_per_doc or None,
            max_words=held_in_cut,
            seed=args.seed,
        )
        docs_option, per_document = REAL_OUT[name]
        out_docs = getattr(args, docs_option)
        held_out = load_real(name, split="held-out", n_documents=out_docs, per_document=per_document, max_words=cut)
        sets["held-in"][name] = [SourcedExample(e, name) for e in held_in]
        sets["held-out"][name] = [SourcedExample(e, name) for e in held_out]
    for task in BUILT:
        for split, n, offset in (("held-in", args.n, 0), ("held-out", args.n_out, 50)):
            exs = load_examples(task, n=n, target_words=args.words, seed=args.seed, offset=offset)
            sets[split][task] = [SourcedExample(e, task) for e in exs]
    return sets


def add_set_arguments(p: argparse.ArgumentParser) -> None:
    """The question options `example_sets` reads (shared with `benchmarks.learn_fusion`), and the model's."""
    p.add_argument("--model", help="model name (default: the embedded SmolLM2-135M)")
    p.add_argument("--config", help="retriever config YAML (e.g. a model in bfloat16); --model overrides its model")
    p.add_argument("--real", default="covidqa,qmsum", help="real-document sets (default covidqa,qmsum)")
    p.add_argument("--n", type=int, default=16, help="held-in questions per built task (default 16)")
    p.add_argument("--n-out", type=int, default=8, help="held-out questions per built task (default 8)")
    p.add_argument("--docs", type=int, help="held-in papers/meetings per real set (default: all)")
    p.add_argument(
        "--held-in-per-doc", type=int, default=4, help="questions per held-in paper/meeting (default 4; 0: all)"
    )
    p.add_argument("--out-docs", type=int, default=10, help="held-out COVID-QA papers (default 10)")
    p.add_argument("--qmsum-out-docs", type=int, default=6, help="held-out QMSum meetings (default 6)")
    p.add_argument("--words", type=int, default=1500)
    p.add_argument("--real-max-words", type=int, default=4000)
    p.add_argument(
        "--held-in-max-words",
        type=int,
        help="cut held-in real documents here instead (0: whole documents, so no question is dropped for gold past "
        "the cut; default: --real-max-words); the held-out ones stay cut at --real-max-words, as the README measures",
    )
    p.add_argument("--validation", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="feature cache folder (default ~/.cache/attnret/train-features)")


def slice_band(features: Sequence[ExampleFeatures], rows: int) -> list[ExampleFeatures]:
    """The first `rows` feature rows (every head of the band's layers) of each example."""
    return [replace(f, x=f.x[:rows]) for f in features]


def view_ndcg(features: Sequence[ExampleFeatures], heads: Sequence[int], weights: np.ndarray, k: int = 10) -> float:
    """Mean nDCG@k of the attention view ``weights @ x[heads]`` (the retriever's weighted mean) over `features`."""
    if not features:
        return float("nan")
    batch = Batch.of(features, heads)
    return float(ndcg_at_k(batch.scores(torch.as_tensor(weights, dtype=torch.float64)), batch, k).mean())


def evaluate_rows(
    train_sets: dict[str, list[ExampleFeatures]],
    held_out: dict[str, list[ExampleFeatures]],
    names: list[str],
    shipped: dict[str, float],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Every row of one (training data, band): validation and held-out nDCG@10 per set, time, examples used."""
    features = [f for fs in train_sets.values() for f in fs]
    base = TrainSettings(top=args.top, seed=args.seed, validation=args.validation)
    train, validation = split_by_document(features, base.validation, base.seed)
    held = {id(f) for f in validation}
    val_sets = {s: [f for f in fs if id(f) in held] for s, fs in train_sets.items()}
    val_sets = {s: fs for s, fs in val_sets.items() if fs}
    index = {n: i for i, n in enumerate(names)}
    rows: list[dict[str, Any]] = []

    def row(label: str, heads: Sequence[int], weights: np.ndarray, seconds: float = 0.0, **extra: Any) -> None:
        out = {
            "row": label,
            "heads": len(heads),
            "deepest": max(int(names[h].split("-")[0]) for h in heads),
            "validation": view_ndcg(validation, heads, weights),
            "validation_by_set": {s: view_ndcg(fs, heads, weights) for s, fs in val_sets.items()},
            "held_out": {s: view_ndcg(fs, heads, weights) for s, fs in held_out.items()},
            "seconds": round(seconds, 2),
            **extra,
        }
        out["held_out_mean"] = float(np.mean(list(out["held_out"].values())))
        rows.append(out)
        logger.info("%-40s val %.3f held-out %s", label, out["validation"], _fmt(out["held_out"]))

    in_band = [index[h] for h in shipped if h in index]
    shipped_in_band = bool(shipped) and len(in_band) == len(shipped)  # a shipped set whose heads this band holds
    if shipped_in_band:
        own = np.array(list(shipped.values()))
        weighted = len(set(own.tolist())) > 1
        label = "shipped head set (its trained weights)" if weighted else "shipped QR heads (equal weights)"
        row(label, in_band, own / own.sum())
    detection = head_ndcg(train, base.k)
    top = [int(i) for i in np.argsort(-detection, kind="stable")[: args.top]]
    row(f"detected top {args.top} on train (equal weights)", top, np.full(len(top), 1 / len(top)))
    everything = list(range(len(names)))
    row("all heads of the band averaged", everything, np.full(len(names), 1 / len(names)))
    t = time.perf_counter()
    free = fit_weights(train, validation, everything, replace(base, objective="lsepair"))
    row(
        "free weights on every head (LSEPair)",
        everything,
        free.weights,
        time.perf_counter() - t,
        best_step=free.best_step,
    )
    for objective in OBJECTIVES:
        selections = ["detection", "l1"] if objective == "lsepair" else ["detection"]
        for select in [*selections, "shipped"] if shipped_in_band else selections:
            settings = replace(base, objective=objective, select="detection" if select == "shipped" else select)
            t = time.perf_counter()
            if select == "shipped":  # the shipped set's heads (detected on other examples), weights trained here
                heads, how = in_band, {"select": "shipped"}
            else:
                heads, how = select_heads(train, settings)
            fit = fit_weights(train, validation, heads, settings)
            order = np.argsort(-fit.weights, kind="stable")
            kept = {names[fit.heads[i]]: float(f"{fit.weights[i]:.6g}") for i in order if fit.weights[i] > 0}
            row(
                f"trained {objective}, shipped heads"
                if select == "shipped"
                else f"trained {objective}, {select} top {args.top}",
                fit.heads,
                fit.weights,
                time.perf_counter() - t,
                objective=objective,
                select=how,
                best_step=fit.best_step,
                equal_weights_validation=fit.equal_validation_ndcg,
                head_weights=kept,
                settings={k: v for k, v in vars(settings).items() if k not in ("objective", "select")},
            )
    for r in rows:
        r["train_examples"], r["validation_examples"] = len(train), len(validation)
    return rows


def ship(entry: dict[str, Any], retriever: Any, used: dict[str, dict[str, int]], path: Path, argv: Any) -> str:
    """Write the best trained row of `entry` on held-in validation as a head-set file, if it beats the shipped QR
    heads there (held-out figures play no part); a line saying what was decided."""
    rows = entry["rows"]
    shipped = next((r for r in rows if r["row"].startswith("shipped")), None)
    trained = [r for r in rows if r["row"].startswith("trained")]
    best = max(trained, key=lambda r: r["validation"])  # ties: the first (LSEPair, detection selection)
    if shipped is not None and best["validation"] <= shipped["validation"]:
        return f"not written: best trained {best['validation']:.3f} <= shipped {shipped['validation']:.3f} (validation)"
    total = sum(best["head_weights"].values())
    weights = {h: float(f"{w / total:.6g}") for h, w in best["head_weights"].items()}
    summary = {
        "objective": best["objective"],
        **best["select"],
        **best["settings"],
        "train_examples": best["train_examples"],
        "validation_examples": best["validation_examples"],
        "validation_ndcg": round(best["validation"], 6),
        "validation_ndcg_equal_weights": round(best["equal_weights_validation"], 6),
        "validation_ndcg_shipped_qr_heads": None if shipped is None else round(shipped["validation"], 6),
        "best_step": best["best_step"],
    }
    result = TrainingResult(
        **provenance(retriever),
        heads=list(weights),
        weights=weights,
        n_examples=sum(used["held-in"].values()),
        skipped=[],
        training=summary,
        sources=[f"{s} ({n} held-in)" for s, n in used["held-in"].items()],
        command=command_line("benchmarks.train_heads", argv),
        max_layer=entry["band"],
    )
    result.save(path)
    against = "no shipped set" if shipped is None else f"shipped QR heads {shipped['validation']:.3f}"
    return f"wrote {best['row']} to {path}: held-in validation {best['validation']:.3f} against {against}"


def _fmt(d: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in d.items())


def table(entries: list[dict[str, Any]]) -> str:
    """Markdown: one line per row of every (training data, band)."""
    out = []
    for e in entries:
        sets = list(e["rows"][0]["held_out"])
        out += [
            f"\n**{e['label']}, trained on {e['data']}, layers 0-{e['band']}** "
            f"({e['rows'][0]['train_examples']} train / {e['rows'][0]['validation_examples']} validation examples)\n",
            "| row | heads | validation | " + " | ".join(f"{s} out" for s in sets) + " | mean out | s |",
            "|---|---:|---:|" + "---:|" * len(sets) + "---:|---:|",
        ]
        for r in e["rows"]:
            cells = " | ".join(f"{r['held_out'][s]:.3f}" for s in sets)
            out.append(
                f"| {r['row']} | {r['heads']} | {r['validation']:.3f} | {cells} | {r['held_out_mean']:.3f} | "
                f"{r['seconds']:.1f} |"
            )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Capture (cached), train every row, print the tables and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_set_arguments(p)
    p.add_argument("--label", default="smollm2-135m")
    p.add_argument("--capture-only", action="store_true", help="capture the features into the cache and stop")
    p.add_argument("--bands", default="18", help="deepest layers of the bands compared, e.g. 18,29 (default 18)")
    p.add_argument("--data", default="covidqa,mix", help="training data: covidqa, mix (default both)")
    p.add_argument("--top", type=int, default=16)
    p.add_argument(
        "--ship",
        type=Path,
        help="write the best trained set (mix data, first band) here if it beats the shipped set on held-in "
        "validation (a candidate to ship as shared_core/head_sets/<model>.yaml)",
    )
    p.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/training/train_heads_LABEL.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    config = config_of(args)
    bands = [int(b) for b in args.bands.split(",")]
    retriever = capture_retriever(config, max(bands))  # the read stops at the deepest band compared
    deepest = retriever.head_selection.deepest
    num_heads = retriever.model.shape.num_heads
    sets = example_sets(args)
    captured: dict[str, dict[str, list[ExampleFeatures]]] = {}
    used: dict[str, dict[str, int]] = {}
    start = time.perf_counter()
    for split, by_set in sets.items():
        captured[split], used[split] = {}, {}
        for name, items in by_set.items():
            feats, skipped = capture_features(retriever, items, deepest, cache_dir=args.cache_dir, show_progress=True)
            captured[split][name] = feats
            used[split][name] = len(feats)
            logger.info("%s %s: %d examples used, %d skipped", split, name, len(feats), len(skipped))
    capture_s = time.perf_counter() - start
    if args.capture_only:
        return 0
    names_all = head_names(num_heads, deepest)
    shipped_path = shipped_head_sets().get(model_id(retriever.config.model))
    shipped_set = load_head_file(shipped_path) if shipped_path else {"heads": []}
    shipped_weights = shipped_set.get("weights") or {}
    shipped = {str(h): float(shipped_weights.get(str(h), 1.0)) for h in shipped_set["heads"]}
    entries = []
    for band in bands:
        rows_n = (band + 1) * num_heads
        held_out = {s: slice_band(fs, rows_n) for s, fs in captured["held-out"].items()}
        for data in args.data.split(","):
            train_sets = {s: fs for s, fs in captured["held-in"].items() if data == "mix" or s == data}
            train_sets = {s: slice_band(fs, rows_n) for s, fs in train_sets.items()}
            rows = evaluate_rows(train_sets, held_out, names_all[:rows_n], shipped, args)
            entries.append({"label": args.label, "data": data, "band": band, "rows": rows})
    text = table(entries)
    sys.stdout.write(text + "\n")
    if args.ship:
        chosen = next(e for e in entries if e["data"] == "mix" and e["band"] == bands[0])
        decision = ship(chosen, retriever, used, args.ship, argv)
        sys.stdout.write(decision + "\n")
        entries.append({"ship": decision})
    out = args.out or OUT_DIR / f"train_heads_{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": run_metadata() | {"command": command_line("benchmarks.train_heads", argv)},
        "capture_seconds_this_run": round(capture_s, 1),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "examples_used": used,
        "entries": entries,
    }
    out.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
