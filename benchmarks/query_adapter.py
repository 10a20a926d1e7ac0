"""Query-side low-rank adapters (issue 28's optional LoRA lever), measured against the frozen model's attention view.

    flock /tmp/attnret-heavy.lock python -m benchmarks.query_adapter [--config C] [--rank 8] [--epochs 12] \
        [--out benchmarks/results/training/query_adapter_LABEL.json]

QRRanker trains the query/key projections of its retrieval heads. Here the adapters change only what the *query
part* of the prompt computes: the document is read by the frozen model, as the product reads it (its KV cache,
shared by every question, stays valid), and the query tokens run through LoRA on the q/k/v/o projections of every
layer up to the head set's deepest. So a read costs what it costs today and the document is still read once for
many questions; the only question is whether 2-core-CPU-sized training on our held-in labels lifts the heads' view.

Per held-in example (the sets of ``benchmarks.train_heads``, same split by document into train and validation): the
frozen model prefills the document once (the engine's own prefill), then each step runs the query part and the "N/A"
calibration part packed in one forward (the engine's `QueryBatch`) with gradients, and turns the shipped heads'
rows into unit scores exactly as the attention view does (calibration, head weights, mean pooling). The loss is
LSEPair over the z-scored unit scores; early stopping on validation nDCG@10. Held-out documents are measured once,
with and without the adapter, after everything is chosen. The training itself is the product's
(`shared_core.training.adapter_training`, `attnret train-adapter`); this module adds the grid, the held-in sets and
the held-out measurement.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from benchmarks.report import command_line, run_metadata
from benchmarks.train_heads import add_set_arguments, example_sets
from shared_core.atomic_file import write_atomic
from shared_core.engine import query_adapter
from shared_core.engine.heads import HeadSelection
from shared_core.engine.query_adapter import save_adapter
from shared_core.evaluation import gold_units
from shared_core.evaluation.metrics import ndcg_at_k
from shared_core.models.loading import model_id
from shared_core.retriever import AttentionRetriever
from shared_core.training.adapter_training import (
    AdapterSettings,
    TrainableAdapter,
    evaluate,
    fit_adapter,
    head_set_data,
    prepare,
    training_retriever,
)
from shared_core.training.command import ADAPTER_OPTIONS
from shared_core.training.data_options import config_of
from shared_core.training.head_features import SourcedExample
from shared_core.training.weights import split_by_document
from shared_core.validation import coerce_document

logger = logging.getLogger("benchmarks.query_adapter")


def settings_of(args: argparse.Namespace) -> AdapterSettings:
    """The training settings of the command's options (one `--grid` entry's), named as `attnret train-adapter`'s."""
    values = {name: getattr(args, name) for name, _, _ in ADAPTER_OPTIONS}
    return AdapterSettings(**values, targets=tuple(args.targets.split(",")), seed=args.seed)


def held_out_scores(
    retriever: AttentionRetriever,
    sets: dict[str, list[SourcedExample]],
    selection: HeadSelection,
    adapter: TrainableAdapter,
) -> dict[str, dict[str, float]]:
    """Frozen and adapted nDCG@10 per held-out set, with one document's read in memory at a time."""
    names: list[str] = []
    frozen: list[float] = []
    adapted: list[float] = []
    kv: dict[str, Any] = {}
    for items in sets.values():
        for item in items:
            if (
                len(item.example.documents) == 1
                and coerce_document(item.example.documents[0], 0).content_hash not in kv
            ):
                kv.clear()
            p = prepare(retriever, item, kv)
            if p is not None:
                frozen += evaluate(retriever, [p], selection, None)
                adapted += evaluate(retriever, [p], selection, adapter)
                names.append(p.set)
    return {"frozen": by_set(names, frozen), "adapter": by_set(names, adapted)}


def head_file_with(adapter_path: Path, selection: HeadSelection, model: str) -> Path:
    """A head-set file beside the adapter: the retriever's head set (`head_set_data`: its file's heads, weights,
    fusion and modes) naming it."""
    path = adapter_path.with_suffix(".yaml")
    data = {**head_set_data(selection, model), "adapter": adapter_path.name}
    write_atomic(path, yaml.safe_dump(data, sort_keys=False))
    return path


def product_check(args: argparse.Namespace, heads: Path, items: Sequence[SourcedExample]) -> dict[str, Any]:
    """The product's own scores with and without the adapter (`score_units`, default fusion): fused and
    attention-alone nDCG@10 per set, the two retrievers sharing the document reads and views."""
    base = config_of(args)
    att = base.attention

    def retriever(adapter: bool) -> AttentionRetriever:  # the same head-set file (and so fusion) either way
        on = {"heads": str(heads), "query_adapter": adapter}
        return AttentionRetriever(base.model_copy(update={"attention": att.model_copy(update=on)}))

    frozen, adapted = retriever(False), retriever(True)
    adapted.share_caches(frozen)
    out: dict[str, dict[str, list[float]]] = {
        f"{r}_{v}": {} for r in ("frozen", "adapter") for v in ("fused", "attention")
    }
    for item in items:
        ex = item.example
        if len(ex.documents) != 1:
            continue
        text = ex.documents[0]
        gold = gold_units([(u.start, u.end) for u in frozen.units(text)], ex.gold, 0)
        if not gold:
            continue
        for name, r in (("frozen", frozen), ("adapter", adapted)):
            hits = r.score_units(ex.query, text)
            for view in ("fused", "attention"):
                score = [h.score if view == "fused" else h.scores["attention"] for h in hits]
                ranking = sorted(range(len(hits)), key=lambda i: -score[i])
                out[f"{name}_{view}"].setdefault(item.origin, []).append(ndcg_at_k(ranking, gold, 10))
        frozen.engine.clear()
    return {
        key: by_set([s for s, vs in sets.items() for _ in vs], [v for vs in sets.values() for v in vs])
        for key, sets in out.items()
    }


def by_set(names: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    """Mean per set (each question's set name in `names`), and overall."""
    sets: dict[str, list[float]] = {}
    for name, v in zip(names, values, strict=True):
        sets.setdefault(name, []).append(v)
    out = {s: float(np.mean(vs)) for s, vs in sets.items()}
    out["all"] = float(np.mean(values)) if values else float("nan")
    return out


GRID_OPTIONS = ("rank", "alpha", "targets", "lr", "weight_decay", "temperature", "accumulate", "epochs", "patience")


def grid(args: argparse.Namespace) -> list[argparse.Namespace]:
    """The settings `--grid` lists (each over the command's own options; none: the command's options alone)."""
    if not args.grid:
        return [args]
    out = []
    for spec in filter(None, (s.strip() for s in args.grid.split(";"))):
        settings = argparse.Namespace(**vars(args))
        for pair in spec.split(","):
            name, _, value = pair.partition("=")
            name = name.strip().replace("-", "_")
            if name not in GRID_OPTIONS:
                raise SystemExit(f"--grid: unknown setting {name!r} (one of {', '.join(GRID_OPTIONS)})")
            current = getattr(args, name)
            setattr(settings, name, value.replace("+", ",") if isinstance(current, str) else type(current)(value))
        out.append(settings)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_arguments(parser)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument(
        "--targets", default=",".join(query_adapter.PROJECTIONS), help="projections adapted (default q,k,v,o)"
    )
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--temperature", type=float, default=4.0, help="scale of the z-scored unit scores")
    parser.add_argument("--accumulate", type=int, default=8, help="questions per optimiser step")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument(
        "--grid",
        help="settings tried one after another on the same reads, ';'-separated, each 'name=value,...' over the "
        "options above (e.g. 'rank=4,targets=q_proj+k_proj;lr=1e-3'); the best on validation is measured held out",
    )
    parser.add_argument(
        "--save",
        help="write the chosen adapter here (safetensors), for a head-set file's adapter: e.g. "
        "~/.cache/attnret/adapters/smollm2-135m-instruct.adapter.safetensors, where the shipped SmolLM2 set looks",
    )
    parser.add_argument("--no-held-out", action="store_true", help="skip the held-out measurement")
    parser.add_argument("--out", default="benchmarks/results/training/query_adapter.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)
    retriever = training_retriever(config_of(args))  # frozen and unquantized, as `attnret train-adapter` trains
    selection = retriever.head_selection
    sets = example_sets(args)
    kv: dict[str, Any] = {}
    t = time.perf_counter()
    single = [item for fs in sets["held-in"].values() for item in fs if len(item.example.documents) == 1]
    held_in = [p for item in single if (p := prepare(retriever, item, kv))]
    prep_s = time.perf_counter() - t
    logger.info("prepared %d held-in questions over %d documents in %.0f s", len(held_in), len(kv), prep_s)
    train_set, validation = split_by_document(held_in, args.validation, args.seed)
    logger.info("train %d / validation %d questions", len(train_set), len(validation))
    runs: list[dict[str, Any]] = []
    best: tuple[dict[str, Any], TrainableAdapter] | None = None
    for settings in grid(args):
        t = time.perf_counter()
        adapter, history = fit_adapter(retriever, train_set, validation, selection, settings_of(settings))
        run: dict[str, Any] = {
            "settings": {k: getattr(settings, k) for k in GRID_OPTIONS},
            "parameters": sum(p.numel() for p in adapter.parameters()),
            "train_s": time.perf_counter() - t,
            "history": history,
            "validation": by_set([p.set for p in validation], evaluate(retriever, validation, selection, adapter)),
        }
        runs.append(run)
        if best is None or run["validation"]["all"] > best[0]["validation"]["all"]:
            best = (run, adapter)
    assert best is not None
    chosen, adapter = best
    result: dict[str, Any] = {
        "model": retriever.model.name,
        "heads": selection.source,
        "deepest": selection.deepest,
        "train_questions": len(train_set),
        "validation_questions": len(validation),
        "prepare_s": prep_s,
        "runs": runs,
        "chosen": chosen["settings"],
        "validation": {
            "frozen": by_set([p.set for p in validation], evaluate(retriever, validation, selection, None)),
            "adapter": chosen["validation"],
        },
    }
    validation_ids = [p.id for p in validation]
    del held_in, train_set, validation
    kv.clear()  # the held-in reads' memory goes before any other read
    retriever.engine.clear()
    if args.save:
        meta = {
            "model": model_id(retriever.config.model),
            "heads": selection.source,
            "command": str(command_line("benchmarks.query_adapter", argv)),
            "settings": json.dumps(chosen["settings"]),
            "validation_ndcg10": json.dumps(result["validation"]),
            "date": run_metadata()["date"],
        }
        save_adapter(args.save, adapter.adapter(meta))
        heads_file = head_file_with(Path(args.save), selection, model_id(retriever.config.model))
        by_id = {item.example.id: item for fs in sets["held-in"].values() for item in fs}
        result["product_validation"] = product_check(args, heads_file, [by_id[i] for i in validation_ids])
        logger.info("product check, held-in validation: %s", result["product_validation"])
        if not args.no_held_out:
            held_out_items = [item for fs in sets["held-out"].values() for item in fs]
            result["product_held_out"] = product_check(args, heads_file, held_out_items)
    if not args.no_held_out and not args.save:  # with --save the product check measures held-out documents
        result["held_out"] = held_out_scores(retriever, sets["held-out"], selection, adapter)
    meta = run_metadata()
    meta["command"] = command_line("benchmarks.query_adapter", argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "args": vars(args), **result}, indent=1), encoding="utf-8")
    shown = ("validation", "held_out", "product_validation", "product_held_out")
    print(json.dumps({k: result[k] for k in shown if k in result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
