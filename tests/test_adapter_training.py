"""Query-adapter training (`attnret train-adapter`): its differentiable path is the attention view, training moves
it, and the command writes a head-set file whose adapter the retriever uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from shared_core import AttentionRetriever
from shared_core.cli import main as cli_main
from shared_core.engine.query_adapter import load_adapter
from shared_core.evaluation import GoldSpan, LabelledExample
from shared_core.training.adapter_training import (
    AdapterSettings,
    TrainableAdapter,
    evaluate,
    fit_adapter,
    loss_of,
    prepare,
    unit_scores,
)
from shared_core.training.head_features import SourcedExample, TrainingInputError

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
    settings = AdapterSettings(
        rank=2, alpha=4.0, targets=("q_proj", "k_proj"), lr=5e-3, weight_decay=0.0, accumulate=1, epochs=2, patience=2
    )
    trained, history = fit_adapter(retriever, items[:2], items[2:], selection, settings)
    assert [h["epoch"] for h in history] == list(range(len(history))) and len(history) == 3
    assert all(np.isfinite(h["loss"]) for h in history[1:])
    kept = float(np.mean(evaluate(retriever, items[2:], selection, trained)))
    assert kept == max(h["validation"] for h in history)  # the returned adapter is the best epoch's
    assert next(h for h in history if h.get("kept"))["validation"] == kept  # and the history marks that epoch
    retriever.engine.clear()


# ------------------------------------------------------------------------------ `attnret train-adapter` end to end

INSTRUMENTS = [("seismometer", "Mara Quill", "Venn"), ("barometer", "Ilse Brandt", "Kovel"),
               ("telescope", "Oren Vask", "Tarn"), ("hygrometer", "Pia Lund", "Morrow")]  # fmt: skip


def _rows() -> list[dict[str, object]]:
    """Four documents, two questions each: who built the instrument, and where it was tried (no shared words)."""
    rows: list[dict[str, object]] = []
    for i, (thing, person, town) in enumerate(INSTRUMENTS):
        built, tried = f"The {thing} was assembled by {person}.", f"Its first trials took place in {town}."
        other = INSTRUMENTS[(i + 1) % 4]
        text = " ".join(
            [f"{person} often walked along the harbour.", *FILLER[:2], built, f"A {thing} needs careful calibration.",
             *FILLER[2:], tried, f"{other[1]} admired the {thing} from afar."]
        )  # fmt: skip
        rows.append(
            {"id": f"{thing}-who", "query": f"Who built the {thing}?", "document": text, "gold": [{"text": built}]}
        )
        where = f"Where was the {thing} tested?"
        rows.append({"id": f"{thing}-where", "query": where, "document": text, "gold": [{"text": tried}]})
    return rows


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _gold_ranks(r: AttentionRetriever, rows: list[dict[str, object]]) -> list[int]:
    """Per question, the units the attention view ranks above its gold unit."""
    out = []
    for row in rows:
        text, gold = str(row["document"]), row["gold"][0]["text"]  # type: ignore[index]
        hits = r.score_units(str(row["query"]), text)
        scores = [h.scores["attention"] for h in hits]
        g = next(i for i, h in enumerate(hits) if h.text == gold)
        out.append(sum(s > scores[g] for s in scores))
    return out


ARGS = ["--rank", "4", "--lr", "5e-3", "--accumulate", "1", "--epochs", "4", "--patience", "4"]


def test_train_adapter_cli_is_deterministic_and_its_file_drives_the_retriever(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _rows()
    data = _jsonl(tmp_path / "train.jsonl", rows)
    for run in ("a", "b"):
        assert cli_main(["train-adapter", "--data", str(data), "--out", str(tmp_path / f"{run}.yaml"), *ARGS]) == 0
    printed = capsys.readouterr().out
    assert "8 used, 0 skipped" in printed and "validation nDCG@10" in printed and "a.adapter.safetensors" in printed
    a, b = (yaml.safe_load((tmp_path / f"{run}.yaml").read_text()) for run in ("a", "b"))
    adapter = load_adapter(tmp_path / "a.adapter.safetensors")
    assert load_adapter(tmp_path / "b.adapter.safetensors").digest == adapter.digest  # deterministic for a seed
    ta, tb = a.pop("adapter_training"), b.pop("adapter_training")
    assert ta["digest"] == adapter.digest and ta["n_examples"] == 8 and ta.pop("seconds") >= 0 <= tb.pop("seconds")
    assert ta == tb | {"digest": ta["digest"]} and a == b | {"adapter": "a.adapter.safetensors"}
    assert ta["train_documents"] + ta["validation_documents"] == 4 and ta["best_epoch"] >= 1
    assert ta["validation_ndcg"] > ta["validation_ndcg_frozen"]
    shipped = AttentionRetriever({}).head_selection
    assert a["heads"] and a["adapter"] == "a.adapter.safetensors"
    assert a["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and shipped.source is not None
    assert {(int(h.split("-")[0]), int(h.split("-")[1])) for h in a["heads"]} == {
        (layer, h) for layer, hs in shipped.per_layer.items() for h in hs or ()
    }  # the model's own head set, naming the adapter
    # `attention.heads: FILE` with query_adapter auto reads the adapter beside the file; false reads frozen
    adapted = AttentionRetriever({"attention": {"heads": str(tmp_path / "a.yaml")}})
    frozen = AttentionRetriever({"attention": {"heads": str(tmp_path / "a.yaml"), "query_adapter": False}})
    assert adapted.head_selection.adapter is not None and adapted.head_selection.adapter.digest == adapter.digest
    assert frozen.head_selection.adapter is None
    ranks_adapted, ranks_frozen = _gold_ranks(adapted, rows), _gold_ranks(frozen, rows)
    assert sum(ranks_adapted) < sum(ranks_frozen), (ranks_adapted, ranks_frozen)


def test_bad_adapter_training_input_names_the_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _rows()[:2]
    long_text = " ".join([*FILLER * 400, "The gauge was lost."])  # ~20k tokens: past SmolLM2's window
    cases = {
        "not found": ({"gold": [{"text": "Nobody built anything."}]}, "gold text not found"),
        "past the window": (
            {"document": long_text, "gold": [{"text": "The gauge was lost."}]},
            "past the model window",
        ),
    }
    for name, (change, message) in cases.items():
        data = _jsonl(tmp_path / f"{name.replace(' ', '_')}.jsonl", [*good, good[0] | {"id": "bad"} | change])
        rc = cli_main(["train-adapter", "--data", str(data), "--out", str(tmp_path / "o.yaml"), *ARGS])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and f"{data}:3" in err, (name, err)
        assert not list(tmp_path.glob("o*"))
    data = _jsonl(tmp_path / "ok.jsonl", good)
    for flags, message in (
        (["--rank", "0"], "rank must be a positive integer"),
        (["--targets", "x_proj"], "targets must be some of"),
    ):
        rc = cli_main(["train-adapter", "--data", str(data), "--out", str(tmp_path / "o.yaml"), *flags])
        assert rc == 2 and message in capsys.readouterr().err
    with pytest.raises(TrainingInputError, match="one document per example"):
        two = LabelledExample("two", "q?", ["A text.", "B text."], [GoldSpan(0, 0, 7)], "toy")
        prepare(AttentionRetriever({}), SourcedExample(two, "here"), {})
