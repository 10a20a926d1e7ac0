"""Head training: the objectives on hand-computed cases, weighted head-set files, `attnret train-heads` end to end."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from shared_core import AttentionRetriever
from shared_core.cli import main as cli_main
from shared_core.config import AttentionConfig
from shared_core.engine.heads import load_head_file, select_heads
from shared_core.engine.scoring import aggregate_heads, pool, unit_token_ranges
from shared_core.evaluation import GoldSpan, LabelledExample
from shared_core.training.head_features import (
    ExampleFeatures,
    SourcedExample,
    TrainingInputError,
    capture_features,
    check_example,
)
from shared_core.training.head_training import (
    TrainSettings,
    capture_retriever,
    fit_weights,
    split_by_document,
    train_heads,
    write_atomic,
)
from shared_core.training.objectives import joint_lh, lse_pair, objective_fn, rand1_lh, sum_marg_lh

# ------------------------------------------------------------------------------ objectives (pure torch, no model)

S = torch.tensor([[2.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
VALID = torch.tensor([[True, True, True, False]])  # the last unit is padding
POS = torch.tensor([[True, False, True, False]])  # two positives: units 0 and 2; one negative: unit 1


def test_objectives_match_hand_computed_values() -> None:
    z = math.exp(2) + math.exp(1) + math.exp(0)  # the padding unit never counts
    assert joint_lh(S, VALID, POS).item() == pytest.approx(-0.5 * (math.log(math.exp(2) / z) + math.log(1 / z)))
    assert sum_marg_lh(S, VALID, POS).item() == pytest.approx(-math.log((math.exp(2) + 1) / z))
    # log(1 + exp(1 - 2) + exp(1 - 0)): pairs (0, 1) and (2, 1)
    assert lse_pair(S, VALID, POS).item() == pytest.approx(math.log(1 + math.exp(-1) + math.exp(1)))
    # one positive drawn: either -log(e^2 / (e^2 + e^1)) or -log(e^0 / (e^0 + e^1)), never with the other positive
    got = rand1_lh(S, VALID, POS, torch.Generator().manual_seed(0)).item()
    options = [-math.log(math.exp(2) / (math.exp(2) + math.e)), -math.log(1 / (1 + math.e))]
    assert min(abs(got - o) for o in options) < 1e-9


def test_rand1lh_draws_every_positive_and_is_seeded() -> None:
    draws = {round(rand1_lh(S, VALID, POS, torch.Generator().manual_seed(i)).item(), 9) for i in range(40)}
    assert len(draws) == 2
    a = [rand1_lh(S, VALID, POS, g).item() for g in [torch.Generator().manual_seed(3)] for _ in range(5)]
    b = [rand1_lh(S, VALID, POS, g).item() for g in [torch.Generator().manual_seed(3)] for _ in range(5)]
    assert a == b


def test_objectives_batch_mean_and_no_negative() -> None:
    s = torch.cat([S, torch.tensor([[0.5, 0.5, 0.0, 0.0]], dtype=torch.float64)])
    valid = torch.cat([VALID, torch.tensor([[True, True, False, False]])])
    pos = torch.cat([POS, torch.tensor([[True, True, False, False]])])  # all valid units gold: no negative
    assert lse_pair(s, valid, pos).item() == pytest.approx(lse_pair(S, VALID, POS).item() / 2)
    assert rand1_lh(s[1:], valid[1:], pos[1:]).item() == pytest.approx(0.0)
    assert sum_marg_lh(s[1:], valid[1:], pos[1:]).item() == pytest.approx(0.0)
    assert joint_lh(s[1:], valid[1:], pos[1:]).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="unknown objective"):
        objective_fn("listnet")  # type: ignore[arg-type]


def test_objectives_push_positives_up() -> None:
    for name in ("lsepair", "jointlh", "summarglh", "rand1lh"):
        s = S.clone().requires_grad_(True)
        objective_fn(name, torch.Generator().manual_seed(0))(s, VALID, POS).backward()
        assert s.grad is not None
        assert s.grad[0, 1] > 0, name  # the negative's score goes down
        assert s.grad[0, 3] == 0, name  # padding gets no gradient


# ------------------------------------------------------------------------------ weighted files and aggregation


def test_weighted_mean_aggregation() -> None:
    rows = {3: torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 5: torch.tensor([[2.0, 2.0]])}
    got = aggregate_heads(rows, "mean", {3: (0.5, 0.0), 5: (0.5,)})
    np.testing.assert_allclose(got, [1.5, 1.0])
    np.testing.assert_allclose(aggregate_heads(rows, "sum", {3: (1.0, 1.0), 5: (1.0,)}), aggregate_heads(rows, "sum"))
    np.testing.assert_allclose(aggregate_heads(rows, "mean", {3: (2.0, 2.0), 5: (2.0,)}), aggregate_heads(rows, "mean"))


def test_weighted_file_round_trips_and_drops_zero_weights(tmp_path: Path) -> None:
    f = tmp_path / "w.yaml"
    f.write_text(
        yaml.safe_dump(
            {"model": "x", "heads": ["20-1", "4-0", "9-2"], "weights": {"20-1": 0, "4-0": 0.75, "9-2": 0.25}}
        )
    )
    sel = select_heads(AttentionConfig(heads=str(f)), 30, 9, "x")
    assert sel.per_layer == {4: (0,), 9: (2,)} and sel.weights == {4: (0.75,), 9: (0.25,)}
    assert sel.deepest == 9  # the read stops at the deepest weighted layer, not at 20
    unweighted = tmp_path / "u.yaml"
    unweighted.write_text(yaml.safe_dump({"model": "x", "heads": ["4-0"]}))
    assert select_heads(AttentionConfig(heads=str(unweighted)), 30, 9, "x").weights is None


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([0.5], "must map"),
        ({"4-0": 1.0}, "exactly the heads"),
        ({"4-0": -1, "9-2": 1}, "finite number >= 0"),
        ({"4-0": float("nan"), "9-2": 1}, "finite number >= 0"),
        ({"4-0": 0, "9-2": 0}, "at least one must be positive"),
    ],
)
def test_bad_weights_are_config_errors(tmp_path: Path, weights: object, message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"heads": ["4-0", "9-2"], "weights": weights}))
    with pytest.raises(ValueError, match=message):
        load_head_file(f)


# ------------------------------------------------------------------------------ training on a tiny set (SmolLM2)

STORIES = [
    "Mary got the milk there. John moved to the bedroom. Sandra went back to the kitchen. "
    "Mary travelled to the hallway. Daniel went to the office. Bill picked up the apple.",
    "Anna dropped the football. Fred went to the garden. Julie journeyed to the park. "
    "Anna moved to the cinema. Bill went back to the school. Fred grabbed the ball.",
    "Jeff took the box. Emma went to the bathroom. Jeff travelled to the kitchen. "
    "Emma picked up the key. Jason moved to the hallway. Jason left the cup.",
]
QUESTIONS = [
    (0, "Who picked up the apple?", "Bill picked up the apple."),
    (0, "Where did Daniel go?", "Daniel went to the office."),
    (1, "Where is Julie?", "Julie journeyed to the park."),
    (1, "Who grabbed the ball?", "Fred grabbed the ball."),
    (2, "Who took the box?", "Jeff took the box."),
    (2, "What did Emma pick up?", "Emma picked up the key."),
]


def _tiny() -> list[SourcedExample]:
    out = []
    for i, (d, q, fact) in enumerate(QUESTIONS):
        s = STORIES[d].index(fact)
        ex = LabelledExample(f"t{i}", q, [STORIES[d]], [GoldSpan(0, s, s + len(fact))], "toy", document_id=str(d))
        out.append(SourcedExample(ex, "toy"))
    return out


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _tiny_file(tmp_path: Path) -> Path:
    rows = [
        {"id": f"t{i}", "query": q, "document": STORIES[d], "gold": [{"text": fact}]}
        for i, (d, q, fact) in enumerate(QUESTIONS)
    ]
    return _jsonl(tmp_path / "tiny.jsonl", rows)


def test_split_by_document_keeps_documents_whole() -> None:
    feats = [ExampleFeatures(f"e{i}", f"doc{i // 2}", np.zeros((2, 3)), np.array([1, 0, 0], bool)) for i in range(10)]
    train, val = split_by_document(feats, 0.3, seed=1)
    assert {f.group for f in train}.isdisjoint({f.group for f in val}) and len(val) >= 3 and train
    assert [f.id for f in split_by_document(feats, 0.3, seed=1)[1]] == [f.id for f in val]
    with pytest.raises(TrainingInputError, match="at least two documents"):
        split_by_document(feats[:2], 0.3, seed=0)


def test_train_heads_cli_is_deterministic_and_loads_through_heads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _tiny_file(tmp_path)
    outs = []
    for run in ("a", "b"):  # separate caches: the capture as well as the fit is repeated
        out = tmp_path / f"{run}.yaml"
        argv = ["train-heads", "--data", str(data), "--out", str(out), "--max-layer", "18", "--top", "6"]
        assert cli_main([*argv, "--validation", "0.34", "--cache-dir", str(tmp_path / f"cache-{run}")]) == 0
        outs.append(yaml.safe_load(out.read_text()))
    printed = capsys.readouterr().out
    assert "6 used, 0 skipped" in printed and "validation nDCG@10" in printed
    a, b = outs
    assert a["heads"] == b["heads"] and a["weights"] == b["weights"] and a["training"] == b["training"]
    assert abs(sum(a["weights"].values()) - 1) < 1e-4 and all(w > 0 for w in a["weights"].values())
    assert a["training"]["train_documents"] + a["training"]["validation_documents"] == 3
    assert a["max_layer"] == 18 and a["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {"torch", "transformers", "attnret"} <= set(a["versions"]) and a["training"]["objective"] == "lsepair"
    r = AttentionRetriever({"attention": {"heads": str(tmp_path / "a.yaml")}})
    assert r.head_selection.weights is not None
    assert r.head_selection.deepest == max(int(h.split("-")[0]) for h in a["heads"]) <= 18
    hits = r.retrieve("Who took the box?", [STORIES[2]], top_k=2)
    assert all(STORIES[2][h.start : h.end] == h.text for h in hits)


def test_weighted_view_is_the_weighted_features_and_training_beats_equal_weights(tmp_path: Path) -> None:
    items = _tiny()
    retriever = capture_retriever(None, 18)
    feats, skipped = capture_features(retriever, items, 18, cache_dir=tmp_path)
    assert len(feats) == 6 and not skipped
    settings = TrainSettings(objective="lsepair", steps=150, l2=1e-3)
    heads = [0, 4, 9, 40, 77, 100, 150, 170]  # heads of several layers up to 18
    fit = fit_weights(feats, feats, heads, settings, early_stopping=False)

    def gold_rank(w: np.ndarray, f: ExampleFeatures) -> int:
        """Units ranked above the best gold unit."""
        s = w @ f.x[heads].astype(np.float64)
        return int((s > s[f.gold].max()).sum())

    equal = np.full(len(heads), 1 / len(heads))
    ranks_t = [gold_rank(fit.weights, f) for f in feats]
    ranks_e = [gold_rank(equal, f) for f in feats]
    assert sum(ranks_t) < sum(ranks_e) and all(t <= e for t, e in zip(ranks_t, ranks_e, strict=True))
    # the file's weights drive the retriever's view: its pooled token scores are the weighted features
    names = [f"{h // 9}-{h % 9}" for h in heads]
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({"heads": names, "weights": dict(zip(names, map(float, fit.weights), strict=True))}))
    r = AttentionRetriever({"attention": {"heads": str(path)}})
    ex = items[0].example
    tokens, token_scores = r.token_scores(ex.query, ex.documents[0])
    units = [(u.start, u.end) for u in r.units(ex.documents[0])]
    lo, hi = unit_token_ranges(tokens.offsets, units)
    view = pool(token_scores, lo, hi, "mean", 3, 2.0) * tokens.n_doc_tokens
    expected = fit.weights @ feats[0].x[heads].astype(np.float64) / fit.weights.sum()
    np.testing.assert_allclose(view, expected, rtol=1e-4, atol=1e-5)


def test_bad_training_input_names_the_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = {"query": "Who took the box?", "document": STORIES[2], "gold": [{"text": "Jeff took the box."}]}
    cases = {
        "not found": ({"gold": [{"text": "Nobody took anything."}]}, "gold text not found"),
        "out of range": ({"gold": [{"start": 5, "end": 5000}]}, "outside document"),
        "no text": ({"documents": [STORIES[0], "  "], "gold": [{"text": "Bill picked up the apple."}]}, "no text"),
        "whitespace gold": (
            {"document": "One fact here.   Two facts here.", "gold": [{"start": 14, "end": 17}]},
            "no unit overlaps",
        ),
    }
    for name, (change, message) in cases.items():
        rows = [good, good | {"id": "bad"} | change]
        if "documents" in change:
            rows[1].pop("document")
        data = _jsonl(tmp_path / f"{name.replace(' ', '_')}.jsonl", rows)
        rc = cli_main(
            [
                "train-heads",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "o.yaml"),
                "--max-layer",
                "2",
                "--cache-dir",
                str(tmp_path / "c"),
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2 and message in err and f"{data}:2" in err, (name, err)
        assert not (tmp_path / "o.yaml").exists()
    with pytest.raises(TrainingInputError, match=r"'x' .*out of range"):
        ex = LabelledExample("x", "q?", ["text"], [GoldSpan(3, 0, 1)], "toy")
        check_example(SourcedExample(ex, "here"))


def test_an_interrupted_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "heads.yaml"

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("os.fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, "heads: ['1-0']\n")
    assert list(tmp_path.iterdir()) == []
    target.write_text("old\n")
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, "heads: ['1-0']\n")
    assert target.read_text() == "old\n" and list(tmp_path.iterdir()) == [target]
    monkeypatch.undo()
    write_atomic(target, "new\n")
    assert target.read_text() == "new\n"


def test_a_written_head_file_gets_the_umask_permissions(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        write_atomic(tmp_path / "heads.yaml", "heads: ['1-0']\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "heads.yaml").stat().st_mode) == 0o644  # readable by others, as any new file


def test_train_heads_api_reports_settings_errors() -> None:
    with pytest.raises(ValueError, match="objective"):
        train_heads(_tiny(), settings=TrainSettings(objective="nope"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="validation"):
        TrainSettings(validation=1.5).check()


def test_train_heads_cuts_held_in_and_held_out_documents_apart(shared_data: Path) -> None:
    """`--held-in-max-words 0 --held-in-per-doc 0` trains on whole held-in meetings and every question of them,
    while the held-out meetings stay cut at `--real-max-words` (what the README measures)."""
    import argparse
    from collections import Counter

    from benchmarks.train_heads import add_set_arguments, example_sets
    from shared_core.evaluation import word_count

    parser = argparse.ArgumentParser()
    add_set_arguments(parser)
    common = ["--real", "qmsum", "--docs", "3", "--qmsum-out-docs", "2", "--n", "1", "--n-out", "1"]
    cut = example_sets(parser.parse_args(common))
    whole = example_sets(parser.parse_args([*common, "--held-in-max-words", "0", "--held-in-per-doc", "0"]))

    def longest(items: list[SourcedExample]) -> int:
        return max(word_count(item.example.documents[0]) for item in items)

    def per_meeting(items: list[SourcedExample]) -> int:
        return max(Counter(item.example.document_id for item in items).values())

    assert longest(cut["held-in"]["qmsum"]) <= 4000 * 1.1  # cut at a sentence end past 4,000 words
    assert longest(whole["held-in"]["qmsum"]) > longest(cut["held-in"]["qmsum"])
    assert per_meeting(cut["held-in"]["qmsum"]) == 4 < per_meeting(whole["held-in"]["qmsum"])
    assert [i.example.id for i in whole["held-out"]["qmsum"]] == [i.example.id for i in cut["held-out"]["qmsum"]]
    assert longest(whole["held-out"]["qmsum"]) <= 4000 * 1.1
