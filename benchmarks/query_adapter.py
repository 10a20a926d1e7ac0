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
with and without the adapter, after everything is chosen.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from benchmarks.report import command_line, run_metadata
from benchmarks.train_heads import add_set_arguments, example_sets
from shared_core.engine import capture, query_adapter, scoring
from shared_core.engine.heads import HeadSelection
from shared_core.engine.query_adapter import QueryAdapter, digest_of, save_adapter
from shared_core.engine.query_batch import BatchRowObserver, QueryBatch, SharedPrefixCache
from shared_core.evaluation import gold_units
from shared_core.evaluation.metrics import ndcg_at_k
from shared_core.models.family import forward_with_cache
from shared_core.models.loading import model_id
from shared_core.retriever import AttentionRetriever
from shared_core.training.data_options import config_of
from shared_core.training.head_features import ExampleFeatures, SourcedExample
from shared_core.training.objectives import lse_pair
from shared_core.training.weights import split_by_document
from shared_core.validation import coerce_document

logger = logging.getLogger("benchmarks.query_adapter")


class TrainableAdapter(torch.nn.Module):
    """The LoRA pairs being trained (A random, B zero: training starts from the frozen model) on the attention
    projections `targets` of layers 0..deepest; `adapter` is the engine's view of the same tensors."""

    def __init__(self, decoder: Any, deepest: int, rank: int, alpha: float, targets: Sequence[str], seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.scale = alpha / rank
        self.decoder = [decoder]  # a list: not a submodule (its weights are not trained)
        self.a = torch.nn.ParameterDict()
        self.b = torch.nn.ParameterDict()
        for layer in range(deepest + 1):
            for name in targets:
                lin = getattr(decoder.layers[layer].self_attn, name)
                a = torch.randn(rank, lin.in_features, generator=gen) / math.sqrt(lin.in_features)
                self.a[f"{layer}_{name}"] = torch.nn.Parameter(a)
                self.b[f"{layer}_{name}"] = torch.nn.Parameter(torch.zeros(lin.out_features, rank))

    def pairs(self) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
        """{(layer, projection): (A, B)}, the parameters themselves."""
        return {(int(k.split("_", 1)[0]), k.split("_", 1)[1]): (self.a[k], self.b[k]) for k in self.a}

    def adapter(self, meta: dict[str, str]) -> QueryAdapter:
        """The engine's adapter of the current weights (a copy, with its digest), as shipped."""
        pairs = {key: (a.detach().clone(), b.detach().clone()) for key, (a, b) in self.pairs().items()}
        return QueryAdapter(pairs, self.scale, digest_of(pairs, self.scale), meta=meta)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Run the forwards inside with these pairs on the query part (gradients reach them)."""
        with query_adapter.applied(QueryAdapter(self.pairs(), self.scale, "training"), self.decoder[0]):
            yield


@dataclass
class Prepared:
    """One question on its frozen document read: the document's keys/values per layer, the packed query and "N/A"
    parts, each unit's token range and the gold units."""

    id: str
    group: str
    set: str
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    n_prefix: int
    doc_start: int
    n_doc: int
    batch: QueryBatch
    lo: torch.Tensor
    hi: torch.Tensor
    gold: np.ndarray


def prepare(retriever: AttentionRetriever, item: SourcedExample, kv_cache: dict[str, Any]) -> Prepared | None:
    """Read the example's (single) document with the frozen model once (kept in `kv_cache` by text) and pack its
    query and calibration parts; None for an example without gold units or with several documents."""
    ex = item.example
    if len(ex.documents) != 1:
        return None
    text = ex.documents[0]
    spans = [(u.start, u.end) for u in retriever.units(text)]
    gold = gold_units(spans, ex.gold, 0)
    if not gold:
        return None
    engine = retriever.engine
    doc = coerce_document(text, 0)
    if doc.content_hash not in kv_cache:
        logger.info("reading document %d (%s)", len(kv_cache) + 1, ex.id)
        engine.clear()
        tokens, _ = engine.head_token_scores([ex.query], doc)  # the engine's own prefill, kept in its cache
        prefilled = engine.prefills.get(engine._prefill_key(doc))
        assert prefilled is not None
        deepest = engine.head_selection.deepest
        kv = [(layer.keys.clone(), layer.values.clone()) for layer in prefilled.cache.layers[: deepest + 1]]
        kv_cache[doc.content_hash] = (tokens, kv)
    tokens, kv = kv_cache[doc.content_hash]
    rows = retriever.config.attention.query_rows
    parts = [engine.prompt.query(ex.query, rows), engine.prompt.query(scoring_calibration_query(), rows)]
    lo, hi = scoring.unit_token_ranges(tokens.offsets, spans)
    mask = np.isin(np.arange(len(spans)), sorted(gold))
    return Prepared(
        ex.id, item.group, item.origin, kv, len(tokens.ids), tokens.doc_start, tokens.n_doc_tokens,
        QueryBatch.of(parts), torch.as_tensor(lo), torch.as_tensor(hi), mask,
    )  # fmt: skip


def scoring_calibration_query() -> str:
    """The calibration query the engine uses ("N/A")."""
    from shared_core.engine.attention_engine import CALIBRATION_QUERY

    return CALIBRATION_QUERY


def unit_scores(retriever: AttentionRetriever, p: Prepared, selection: HeadSelection) -> torch.Tensor:
    """The attention view's score of every unit (calibrated, head-weighted mean, mean pooling, times the document's
    tokens), computed with gradients through whatever adapter is applied."""
    decoder = retriever.model.decoder
    cache = SharedPrefixCache(p.kv, p.n_prefix)
    observer = BatchRowObserver(selection, p.batch.rows, p.batch.weights)
    mask = p.batch.attention_mask(p.n_prefix, torch.device("cpu"))
    with capture.observing(observer), contextlib.suppress(capture.StopForward):
        forward_with_cache(
            decoder, cache, input_ids=p.batch.ids, position_ids=p.batch.offsets + p.n_prefix, attention_mask=mask
        )
    per_part = [
        scoring.document_token_scores(
            {layer: probs[b, :, : p.n_prefix] for layer, probs in observer.captured.items()},
            p.n_prefix,
            p.doc_start,
            p.n_doc,
        )
        for b in range(2)
    ]
    layers = sorted(per_part[0])
    rows = torch.cat([per_part[0][layer] - per_part[1][layer] for layer in layers])  # [heads, n_doc]
    if selection.weights is not None:
        w = torch.tensor([x for layer in layers for x in selection.weights[layer]], dtype=rows.dtype)
        token = (w[:, None] * rows).sum(dim=0) / w.sum()
    else:
        token = rows.mean(dim=0)
    csum = torch.cat([token.new_zeros(1), torch.cumsum(token, dim=0)])
    return (csum[p.hi] - csum[p.lo]) / (p.hi - p.lo).clamp(min=1) * p.n_doc


def ndcg10(scores: torch.Tensor, gold: np.ndarray) -> float:
    """nDCG@10 of the units ranked by `scores`."""
    ranking = torch.argsort(scores.detach(), descending=True).tolist()
    return ndcg_at_k(ranking, {int(i) for i in np.flatnonzero(gold)}, 10)


def evaluate(
    retriever: AttentionRetriever, items: Sequence[Prepared], selection: HeadSelection, adapter: TrainableAdapter | None
) -> list[float]:
    """nDCG@10 of each prepared question, with the adapter applied (None: the frozen model)."""
    out = []
    with torch.no_grad(), adapter.applied() if adapter is not None else contextlib.nullcontext():
        for p in items:
            out.append(ndcg10(unit_scores(retriever, p, selection), p.gold))
    return out


def loss_of(scores: torch.Tensor, gold: np.ndarray, temperature: float) -> torch.Tensor:
    """LSEPair over the question's z-scored unit scores (`temperature` sets the softmax's sharpness)."""
    z = (scores - scores.mean()) / scores.std().clamp(min=1e-8) * temperature
    positive = torch.as_tensor(gold)[None]
    return lse_pair(z[None].double(), torch.ones_like(positive), positive)


def train(
    retriever: AttentionRetriever,
    train_set: Sequence[Prepared],
    validation: Sequence[Prepared],
    selection: HeadSelection,
    args: argparse.Namespace,
) -> tuple[TrainableAdapter, list[dict[str, Any]]]:
    """Adam on the adapter, one question per step (`--accumulate` per update), early-stopped on validation."""
    torch.manual_seed(args.seed)
    adapter = TrainableAdapter(
        retriever.model.decoder, selection.deepest, args.rank, args.alpha, args.targets.split(","), args.seed
    )
    opt = torch.optim.AdamW(adapter.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    history: list[dict[str, Any]] = []
    best = float(np.mean(evaluate(retriever, validation, selection, None)))
    best_state = {k: v.detach().clone() for k, v in adapter.state_dict().items()}
    history.append({"epoch": 0, "validation": best})
    logger.info("epoch 0 (frozen): validation %.4f", best)
    rng = np.random.default_rng(args.seed)
    stale = 0
    for epoch in range(1, args.epochs + 1):
        t = time.perf_counter()
        losses = []
        order = rng.permutation(len(train_set))
        opt.zero_grad()
        with adapter.applied():
            for i, j in enumerate(order):
                p = train_set[j]
                loss = loss_of(unit_scores(retriever, p, selection), p.gold, args.temperature) / args.accumulate
                loss.backward()
                losses.append(float(loss.detach()) * args.accumulate)
                if (i + 1) % args.accumulate == 0 or i == len(order) - 1:
                    opt.step()
                    opt.zero_grad()
        val = float(np.mean(evaluate(retriever, validation, selection, adapter)))
        train_ndcg = float(np.mean(evaluate(retriever, train_set, selection, adapter)))
        history.append(
            {"epoch": epoch, "loss": float(np.mean(losses)), "train": train_ndcg, "validation": val,
             "seconds": time.perf_counter() - t}
        )  # fmt: skip
        logger.info("epoch %d: loss %.4f train %.4f validation %.4f", epoch, np.mean(losses), train_ndcg, val)
        if val > best + 1e-4:
            best, stale = val, 0
            best_state = {k: v.detach().clone() for k, v in adapter.state_dict().items()}
        else:
            stale += 1
            if stale >= args.patience:
                break
    adapter.load_state_dict(best_state)
    return adapter, history


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


def head_file_with(adapter_path: Path, selection: HeadSelection) -> Path:
    """A head-set file beside the adapter: the retriever's head set (its file's heads and weights) naming it."""
    data = yaml.safe_load(Path(selection.source).read_text(encoding="utf-8"))
    data["adapter"] = adapter_path.name
    path = adapter_path.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
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
    base = config_of(args)  # training starts from the frozen model, whatever adapter the head set ships with
    retriever = AttentionRetriever(
        base.model_copy(update={"attention": base.attention.model_copy(update={"query_adapter": False})})
    )
    retriever.warm_up()
    selection = retriever.head_selection
    sets = example_sets(args)
    kv: dict[str, Any] = {}
    t = time.perf_counter()
    held_in = [p for fs in sets["held-in"].values() for item in fs if (p := prepare(retriever, item, kv))]
    prep_s = time.perf_counter() - t
    logger.info("prepared %d held-in questions over %d documents in %.0f s", len(held_in), len(kv), prep_s)
    feats = [ExampleFeatures(p.id, p.group, np.zeros((0, len(p.gold)), np.float32), p.gold) for p in held_in]
    _, val_f = split_by_document(feats, args.validation, args.seed)
    val_ids = {id(f) for f in val_f}
    train_set = [p for p, f in zip(held_in, feats, strict=True) if id(f) not in val_ids]
    validation = [p for p, f in zip(held_in, feats, strict=True) if id(f) in val_ids]
    logger.info("train %d / validation %d questions", len(train_set), len(validation))
    runs: list[dict[str, Any]] = []
    best: tuple[dict[str, Any], TrainableAdapter] | None = None
    for settings in grid(args):
        t = time.perf_counter()
        adapter, history = train(retriever, train_set, validation, selection, settings)
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
    del held_in, train_set, validation, feats
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
        heads_file = head_file_with(Path(args.save), selection)
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
