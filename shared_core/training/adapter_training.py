"""Query-adapter training (`attnret train-adapter`): LoRA pairs on the attention projections that only the query
part of the prompt runs through, trained so that a head set's unit scores rank the gold units first.

The document is read once by the frozen model (the engine's own prefill, so its KV cache stays the one every question
shares at inference); each step runs the question's and the "N/A" calibration part packed in one forward
(`QueryBatch`) with gradients through the adapter, and turns the head set's rows into unit scores exactly as the
attention view does (calibration, head weights, mean pooling, times the document's tokens). The loss is LSEPair over
the z-scored unit scores (seed 003's most robust multi-positive objective); AdamW; early stopping on the nDCG@10 of
validation documents (split by document). Deterministic for a seed on one machine.

The result is a head-set file (the retriever's head set, naming the adapter) and the adapter beside it
(safetensors): ``attention.heads: FILE`` uses both, as ``query_adapter: auto`` reads an adapter beside its file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from shared_core.atomic_file import write_atomic
from shared_core.config import RetrieverConfig
from shared_core.engine import capture, query_adapter, scoring
from shared_core.engine.attention_engine import CALIBRATION_QUERY
from shared_core.engine.heads import HeadSelection, load_head_file
from shared_core.engine.query_adapter import PROJECTIONS, QueryAdapter, digest_of, save_adapter
from shared_core.engine.query_batch import BatchRowObserver, QueryBatch, SharedPrefixCache
from shared_core.evaluation import gold_units
from shared_core.evaluation.metrics import ndcg_at_k
from shared_core.models.family import forward_with_cache
from shared_core.models.loading import model_id
from shared_core.retriever import AttentionRetriever
from shared_core.training.head_features import SourcedExample, TrainingInputError, check_example, skip_without_gold
from shared_core.training.head_set_file import versions
from shared_core.training.objectives import lse_pair
from shared_core.training.weights import split_by_document
from shared_core.validation import coerce_document

logger = logging.getLogger(__name__)

__all__ = [
    "AdapterSettings",
    "AdapterTrainingResult",
    "Prepared",
    "TrainableAdapter",
    "evaluate",
    "fit_adapter",
    "loss_of",
    "prepare",
    "train_adapter",
    "training_retriever",
    "unit_scores",
]


@dataclass(frozen=True)
class AdapterSettings:
    """How an adapter is trained (`fit_adapter`); the defaults are the settings that trained the Qwen 1.5B's
    (`benchmarks/results/training/query_adapter_qwen1.5b_shipped.json`)."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = PROJECTIONS
    lr: float = 5e-4
    weight_decay: float = 0.01
    temperature: float = 2.0
    """Scale of the z-scored unit scores in the loss (the softmax's sharpness)."""
    accumulate: int = 8
    """Questions per optimiser step."""
    epochs: int = 8
    patience: int = 2
    validation: float = 0.3
    """Share of the examples (whole documents) held out for early stopping."""
    seed: int = 0

    def check(self) -> None:
        """Refuse settings that cannot train (a ValueError naming the setting)."""
        for name in ("rank", "accumulate", "epochs", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("alpha", "lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 < self.validation < 1:
            raise ValueError(f"validation must be a share between 0 and 1, got {self.validation}")
        bad = [t for t in self.targets if t not in PROJECTIONS]
        if not self.targets or bad:
            raise ValueError(f"targets must be some of {', '.join(PROJECTIONS)}, got {list(self.targets)}")


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
        """The engine's adapter of the current weights (a copy, with its digest), as saved."""
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


def check_one_document(item: SourcedExample) -> None:
    """Adapter training reads one document per example: another count is a `TrainingInputError` naming it."""
    if len(item.example.documents) != 1:
        raise TrainingInputError(
            f"{item.name}: adapter training reads one document per example, got {len(item.example.documents)}"
        )


def prepare(retriever: AttentionRetriever, item: SourcedExample, kv_cache: dict[str, Any]) -> Prepared | None:
    """Read the example's (single) document with the frozen model once (kept in `kv_cache` by text) and pack its
    query and calibration parts; None for an example without gold units. An example over several documents is a
    `TrainingInputError` (training reads one document per question), as is one past the model's window."""
    check_one_document(item)
    ex = item.example
    text = ex.documents[0]
    spans = [(u.start, u.end) for u in retriever.units(text)]
    gold = gold_units(spans, ex.gold, 0)
    if not gold:
        return None
    engine = retriever.engine
    doc = coerce_document(text, 0)
    rows = retriever.config.attention.query_rows
    batch = QueryBatch.of([engine.prompt.query(ex.query, rows), engine.prompt.query(CALIBRATION_QUERY, rows)])
    tokens = engine.document_tokens(doc)
    if len(tokens.ids) + int(batch.offsets.max()) + 1 > engine.window:
        raise TrainingInputError(
            f"{item.name}: its document and query are {len(tokens.ids) + int(batch.offsets.max()) + 1} tokens, past "
            f"the model window of {engine.window}: training reads whole documents, so cut it (--real-max-words for "
            "covidqa/qmsum) or split it into examples that fit"
        )
    if doc.content_hash not in kv_cache:
        _, cache = engine.document_cache(doc)
        deepest = engine.head_selection.deepest
        kv_cache[doc.content_hash] = [
            (layer.keys.clone(), layer.values.clone()) for layer in cache.layers[: deepest + 1]
        ]
        engine.clear()  # the clone is kept; the engine's copy goes
    kv = kv_cache[doc.content_hash]
    lo, hi = scoring.unit_token_ranges(tokens.offsets, spans)
    mask = np.isin(np.arange(len(spans)), sorted(gold))
    return Prepared(
        ex.id, item.group, item.origin, kv, len(tokens.ids), tokens.doc_start, tokens.n_doc_tokens,
        batch, torch.as_tensor(lo), torch.as_tensor(hi), mask,
    )  # fmt: skip


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


def evaluate(
    retriever: AttentionRetriever, items: Sequence[Prepared], selection: HeadSelection, adapter: TrainableAdapter | None
) -> list[float]:
    """nDCG@10 of each prepared question, with the adapter applied (None: the frozen model)."""
    out = []
    with torch.no_grad(), adapter.applied() if adapter is not None else contextlib.nullcontext():
        for p in items:
            ranking = torch.argsort(unit_scores(retriever, p, selection), descending=True).tolist()
            out.append(ndcg_at_k(ranking, {int(i) for i in np.flatnonzero(p.gold)}, 10))
    return out


def loss_of(scores: torch.Tensor, gold: np.ndarray, temperature: float) -> torch.Tensor:
    """LSEPair over the question's z-scored unit scores (`temperature` sets the softmax's sharpness)."""
    z = (scores - scores.mean()) / scores.std().clamp(min=1e-8) * temperature
    positive = torch.as_tensor(gold)[None]
    return lse_pair(z[None].double(), torch.ones_like(positive), positive)


def fit_adapter(
    retriever: AttentionRetriever,
    train_set: Sequence[Prepared],
    validation: Sequence[Prepared],
    selection: HeadSelection,
    settings: AdapterSettings,
    show_progress: bool = False,
) -> tuple[TrainableAdapter, list[dict[str, Any]]]:
    """AdamW on the adapter, one question per step (`accumulate` per update); the best validation epoch's weights
    are returned (epoch 0 is the frozen model: B starts at zero), with each epoch's figures (the returned one's
    marked ``kept``)."""
    torch.manual_seed(settings.seed)
    adapter = TrainableAdapter(
        retriever.model.decoder, selection.deepest, settings.rank, settings.alpha, settings.targets, settings.seed
    )
    opt = torch.optim.AdamW(adapter.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    history: list[dict[str, Any]] = []
    best = float(np.mean(evaluate(retriever, validation, selection, None)))
    best_state = {k: v.detach().clone() for k, v in adapter.state_dict().items()}
    history.append({"epoch": 0, "validation": best})
    logger.info("epoch 0 (frozen): validation %.4f", best)
    rng = np.random.default_rng(settings.seed)
    stale = kept = 0
    bar = tqdm(range(1, settings.epochs + 1), desc="epochs", disable=not show_progress)
    for epoch in bar:
        t = time.perf_counter()
        losses = []
        order = rng.permutation(len(train_set))
        opt.zero_grad()
        with adapter.applied():
            for i, j in enumerate(order):
                p = train_set[j]
                loss = loss_of(unit_scores(retriever, p, selection), p.gold, settings.temperature) / settings.accumulate
                loss.backward()
                losses.append(float(loss.detach()) * settings.accumulate)
                if (i + 1) % settings.accumulate == 0 or i == len(order) - 1:
                    opt.step()
                    opt.zero_grad()
        val = float(np.mean(evaluate(retriever, validation, selection, adapter)))
        train_ndcg = float(np.mean(evaluate(retriever, train_set, selection, adapter)))
        history.append(
            {"epoch": epoch, "loss": float(np.mean(losses)), "train": train_ndcg, "validation": val,
             "seconds": time.perf_counter() - t}
        )  # fmt: skip
        logger.info("epoch %d: loss %.4f train %.4f validation %.4f", epoch, np.mean(losses), train_ndcg, val)
        bar.set_postfix(validation=f"{val:.3f}", frozen=f"{history[0]['validation']:.3f}")
        if val > best + 1e-4:
            best, stale, kept = val, 0, epoch
            best_state = {k: v.detach().clone() for k, v in adapter.state_dict().items()}
        else:
            stale += 1
            if stale >= settings.patience:
                break
    adapter.load_state_dict(best_state)
    history[kept]["kept"] = True
    return adapter, history


# ----------------------------------------------------------------------------------------------- the command


def training_retriever(config: RetrieverConfig | dict[str, Any] | str | Path | None) -> AttentionRetriever:
    """The retriever training reads with: the config's model and head set, frozen (`query_adapter: false`, training
    starts from the model itself) and unquantized (int8 linear layers have no gradient)."""
    base = RetrieverConfig.coerce(config)
    if base.model.quantize == "int8":
        logger.warning("model.quantize int8 has no gradient: the adapter trains on the unquantized model")
    model = base.model.model_copy(update={"quantize": "none"})
    attention = base.attention.model_copy(update={"query_adapter": False})
    retriever = AttentionRetriever(base.model_copy(update={"model": model, "attention": attention}))
    retriever.warm_up()
    return retriever


@dataclass
class AdapterTrainingResult:
    """A trained adapter, the head set it was trained for and how it was trained; `save` writes both files."""

    adapter: QueryAdapter
    head_set: dict[str, Any]
    n_examples: int
    skipped: list[str]
    training: dict[str, Any]
    sources: list[str] = field(default_factory=list)
    command: str | None = None
    seconds: float = 0.0

    def save(self, heads_path: str | Path, adapter_path: str | Path | None = None) -> Path:
        """Write the adapter (default: ``<heads file stem>.adapter.safetensors`` beside it), then the head-set file
        naming it; both atomically. Returns the adapter's path."""
        heads_path = Path(heads_path)
        adapter_path = (
            Path(adapter_path) if adapter_path else heads_path.with_name(f"{heads_path.stem}.adapter.safetensors")
        )
        if adapter_path.resolve().parent != heads_path.resolve().parent:
            raise ValueError(f"the adapter {adapter_path} must lie beside its head-set file {heads_path}")
        save_adapter(adapter_path, self.adapter)
        data = {
            **self.head_set,
            "adapter": adapter_path.name,
            "adapter_training": {
                **self.training,
                "n_examples": self.n_examples,
                "skipped_examples": self.skipped,
                "sources": self.sources,
                "command": self.command,
                "digest": self.adapter.digest,
                "seconds": round(self.seconds, 1),
                "versions": versions(),
            },
        }
        write_atomic(heads_path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        return adapter_path


def head_set_data(selection: HeadSelection, model: str) -> dict[str, Any]:
    """The head-set file's content the adapter was trained for: its file's (fusion, calibration and modes
    included), or the selection's heads when they came from the config."""
    if selection.source and Path(selection.source).is_file():
        data = dict(load_head_file(selection.source))
        data.pop("adapter", None)
        data.pop("adapter_training", None)
        return data
    heads = [f"{layer}-{h}" for layer, hs in selection.per_layer.items() for h in (hs or ())]
    if not heads or any(hs is None for hs in selection.per_layer.values()):
        raise ValueError(
            "adapter training needs a head set (attention.heads: a file, a 'layer-head' list, or auto for a model "
            "that ships one); every head of whole layers is not one"
        )
    return {"model": model, "heads": heads}


def train_adapter(
    examples: Sequence[SourcedExample],
    config: RetrieverConfig | dict[str, Any] | str | Path | None = None,
    settings: AdapterSettings | None = None,
    *,
    show_progress: bool = False,
    sources: Sequence[str] = (),
    command: str | None = None,
) -> AdapterTrainingResult:
    """Read every example's document once with the frozen model, split the examples by document, and train an
    adapter for the config's head set; bad examples are refused (naming them) before any model runs."""
    settings = settings or AdapterSettings()
    settings.check()
    for item in examples:
        check_example(item)
        check_one_document(item)
    start = time.perf_counter()
    retriever = training_retriever(config)
    selection = retriever.head_selection
    head_set = head_set_data(selection, model_id(retriever.config.model))
    kv: dict[str, Any] = {}
    prepared: list[Prepared] = []
    skipped: list[str] = []
    for item in tqdm(examples, desc="read", disable=not show_progress):
        p = prepare(retriever, item, kv)
        if p is not None:
            prepared.append(p)
        else:
            skip_without_gold(item)
            skipped.append(item.name)
    if not prepared:
        raise TrainingInputError(f"no usable example: all {len(examples)} had no gold unit")
    train_set, validation = split_by_document(prepared, settings.validation, settings.seed)
    logger.info("train %d / validation %d questions (%d documents read)", len(train_set), len(validation), len(kv))
    adapter, history = fit_adapter(retriever, train_set, validation, selection, settings, show_progress)
    best = next(h for h in history if h.get("kept"))  # its validation is the returned adapter's
    frozen, trained = history[0]["validation"], best["validation"]
    training = {
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()},
        "train_examples": len(train_set),
        "validation_examples": len(validation),
        "train_documents": len({p.group for p in train_set}),
        "validation_documents": len({p.group for p in validation}),
        "validation_ndcg_frozen": round(frozen, 6),
        "validation_ndcg": round(trained, 6),
        "best_epoch": int(best["epoch"]),
        "epochs_run": len(history) - 1,
    }
    meta = {
        "model": model_id(retriever.config.model),
        "heads": str(selection.source),
        "command": str(command),
        "settings": json.dumps(training["settings"]),
        "validation_ndcg10": json.dumps({"frozen": frozen, "adapter": trained}),
    }
    return AdapterTrainingResult(
        adapter=adapter.adapter(meta),
        head_set=head_set,
        n_examples=len(prepared),
        skipped=skipped,
        training=training,
        sources=list(sources),
        command=command,
        seconds=time.perf_counter() - start,
    )
