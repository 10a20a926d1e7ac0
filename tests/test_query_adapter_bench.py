"""The query-side adapter benchmark: its differentiable path is the attention view, and training moves it."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.query_adapter import TrainableAdapter, evaluate, loss_of, prepare, train, unit_scores
from shared_core import AttentionRetriever
from shared_core.evaluation import GoldSpan, LabelledExample
from shared_core.training.head_features import SourcedExample

FILLER = [
    "The harbour opened at dawn and the ferries left on time.",
    "Bread in the market cost more than it did last spring.",
    "A choir rehearsed in the old hall every Thursday evening.",
    "Rain kept the fishermen ashore for most of the week.",
]


def _example(i: int) -> SourcedExample:
    """A short document where one sentence answers the question (the gold span)."""
    fact = f"The Kestrel seismometer number {i} was built in Venn by Mara Quill."
    sentences = [*FILLER[: i % 4], fact, *FILLER[i % 4 :]]
    text = " ".join(sentences)
    start = text.index(fact)
    ex = LabelledExample(f"q{i}", "Who built the seismometer?", [text], [GoldSpan(0, start, start + len(fact))], "t")
    return SourcedExample(ex, "test")


def test_frozen_path_is_the_attention_view(retriever: AttentionRetriever) -> None:
    item = _example(1)
    prepared = prepare(retriever, item, {})
    assert prepared is not None and prepared.gold.sum() == 1
    with torch.no_grad():
        mine = unit_scores(retriever, prepared, retriever.head_selection).numpy()
    retriever.engine.clear()
    hits = retriever.score_units(item.example.query, item.example.documents[0])
    theirs = np.array([h.scores["attention"] for h in hits])
    assert mine.shape == theirs.shape
    assert np.corrcoef(mine, theirs)[0, 1] > 0.9999
    assert list(np.argsort(-mine)) == list(np.argsort(-theirs))


def test_zero_adapter_changes_nothing_and_training_moves_the_scores(retriever: AttentionRetriever) -> None:
    selection = retriever.head_selection
    items = [p for i in range(4) if (p := prepare(retriever, _example(i), {})) is not None]
    frozen = evaluate(retriever, items, selection, None)
    adapter = TrainableAdapter(retriever.model.decoder, selection.deepest, 2, 4.0, ["q_proj"], seed=0)
    assert evaluate(retriever, items, selection, adapter) == frozen  # B starts at zero: the model unchanged
    with adapter.applied():
        loss = loss_of(unit_scores(retriever, items[0], selection), items[0].gold, 4.0)
    loss.backward()
    assert all(w.grad is not None for w in adapter.b.values())  # the gradient reaches the query projections
    with torch.no_grad():
        for w in adapter.parameters():
            assert w.grad is not None
            w.sub_(0.05 * w.grad)  # one step down the gradient lowers this question's loss
        still = unit_scores(retriever, items[0], selection)
        with adapter.applied():
            moved = unit_scores(retriever, items[0], selection)
            after = loss_of(moved, items[0].gold, 4.0)
    assert float(after) < float(loss.detach())
    assert not torch.allclose(moved, still)  # the adapter acts only while applied
    assert torch.equal(still, unit_scores(retriever, items[0], selection).detach())


def test_training_keeps_the_best_validation_epoch(retriever: AttentionRetriever) -> None:
    selection = retriever.head_selection
    items = [p for i in range(4) if (p := prepare(retriever, _example(i), {})) is not None]
    args = argparse.Namespace(
        seed=0, rank=2, alpha=4.0, targets="q_proj,k_proj", lr=5e-3, weight_decay=0.0, temperature=4.0,
        accumulate=1, epochs=2, patience=2,
    )  # fmt: skip
    trained, history = train(retriever, items[:2], items[2:], selection, args)
    assert [h["epoch"] for h in history] == list(range(len(history))) and len(history) == 3
    assert all(np.isfinite(h["loss"]) for h in history[1:])
    kept = float(np.mean(evaluate(retriever, items[2:], selection, trained)))
    assert kept == max(h["validation"] for h in history)  # the returned adapter is the best epoch's
    retriever.engine.clear()
