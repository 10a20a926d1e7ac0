"""QR heads: head strings, shipped sets, capture restricted to their layers, detection end to end."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from shared_core import AttentionRetriever, RetrieverConfig
from shared_core.cli import main as cli_main
from shared_core.config import AttentionConfig
from shared_core.engine.heads import load_head_file, parse_heads, select_heads, shipped_head_sets
from shared_core.engine.scoring import pool, unit_token_ranges
from shared_core.evaluation import GoldSpan, LabelledExample, real_split
from shared_core.training.head_detection import _ndcg_rows, detect_heads, detection_examples


def test_parse_heads_groups_by_layer_and_validates() -> None:
    assert parse_heads(["14-22", "13-16", "14-1", " 14-22 "], 32, 32) == {13: (16,), 14: (1, 22)}
    with pytest.raises(ValueError, match="32 layers"):
        parse_heads(["32-0"], 32, 32)
    with pytest.raises(ValueError, match="form 'layer-head'"):
        parse_heads(["14_22"], 32, 32)


def test_published_head_sets_are_shipped_and_selected_by_model_id() -> None:
    shipped = shipped_head_sets()
    assert "meta-llama/Llama-3.1-8B-Instruct" in shipped and "Qwen/Qwen2.5-7B-Instruct" in shipped
    sel = select_heads(AttentionConfig(), 32, 32, "meta-llama/Llama-3.1-8B-Instruct")
    assert sel.per_layer[14] == (0, 1, 22, 28, 31) and sel.deepest == 20
    qwen = select_heads(AttentionConfig(), 28, 28, "Qwen/Qwen2.5-7B-Instruct")
    assert sum(len(h) for h in qwen.per_layer.values()) == 16
    # an unknown model falls back to all heads of the layer band
    band = select_heads(AttentionConfig(), 30, 9, "some/other-model")
    assert band.layers == list(range(15, 30)) and all(h is None for h in band.per_layer.values())


def test_head_file_path_and_bad_file(tmp_path) -> None:
    f = tmp_path / "h.yaml"
    f.write_text(yaml.safe_dump({"model": "x", "heads": ["2-1", "4-0"]}))
    sel = select_heads(AttentionConfig(heads=str(f)), 30, 9, "x")
    assert sel.per_layer == {2: (1,), 4: (0,)}
    bad = tmp_path / "bad.yaml"
    bad.write_text("heads: 3\n")
    with pytest.raises(ValueError, match="'heads' list"):
        load_head_file(bad)


def test_threshold_sum_pooling_is_qrhead_rule() -> None:
    t = np.array([0.0, 0.0, 0.0, 0.0, 10.0, -50.0, 1.0, 1.0])
    offsets = np.array([[i, i + 1] for i in range(8)])
    lo, hi = unit_token_ranges(offsets, [(0, 4), (4, 6), (6, 8)])
    thr = t.mean() - 2 * t.std()  # -50 is the only token below it
    assert -50.0 < thr
    np.testing.assert_allclose(pool(t, lo, hi, "threshold_sum", 3, 2.0), [0.0, 10.0, 2.0])
    np.testing.assert_allclose(pool(t, lo, hi, "mean", 3, 2.0), [0.0, -20.0, 1.0])
    np.testing.assert_allclose(pool(t, lo, hi, "max", 3, 2.0), [0.0, 10.0, 1.0])
    rows = np.stack([t, -t])  # one row per head: pooled row by row
    assert pool(rows, lo, hi, "max", 3, 2.0).shape == (2, 3)


def test_ndcg_rows_matches_definition() -> None:
    scores = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    relevant = np.array([False, False, True])
    got = _ndcg_rows(scores, relevant, 10)
    np.testing.assert_allclose(got, [1 / np.log2(4), 1.0])


STORY = (
    "Mary got the milk there. John moved to the bedroom. Sandra went back to the kitchen. "
    "Mary travelled to the hallway. Daniel went to the office. Bill picked up the apple."
)


def _examples() -> list[LabelledExample]:
    def ex(i: int, q: str, fact: str) -> LabelledExample:
        s = STORY.index(fact)
        return LabelledExample(f"e{i}", q, [STORY], [GoldSpan(0, s, s + len(fact))], "toy")

    return [
        ex(0, "Who picked up the apple?", "Bill picked up the apple."),
        ex(1, "Where did Daniel go?", "Daniel went to the office."),
        ex(2, "Who got the milk?", "Mary got the milk there."),
    ]


def test_detection_is_deterministic_and_writes_a_loadable_file(tmp_path) -> None:
    cfg = RetrieverConfig.model_validate({"attention": {"pooling": "threshold_sum"}})
    a = detect_heads(_examples(), cfg, top=6)
    b = detect_heads(_examples(), cfg, top=6)
    assert a.heads == b.heads and len(a.heads) == 6
    assert a.scores == b.scores and len(a.scores) == 30 * 9
    assert list(a.scores.values()) == sorted(a.scores.values(), reverse=True)
    assert a.scoring_rule["pooling"] == "threshold_sum" and a.model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {"transformers", "torch", "attnret"} <= set(a.versions)
    path = tmp_path / "heads.yaml"
    a.save(path)
    assert load_head_file(path)["heads"] == a.heads
    r = AttentionRetriever({"attention": {"heads": str(path), "head_aggregation": "sum"}})
    assert sorted(f"{layer}-{h}" for layer, hs in r.head_selection.per_layer.items() for h in hs) == sorted(a.heads)
    hits = r.retrieve("Who picked up the apple?", [STORY], top_k=2)
    assert all(STORY[h.start : h.end] == h.text for h in hits)


def test_detection_bounded_to_a_layer_scores_its_heads_as_a_full_detection_does(tmp_path) -> None:
    full = detect_heads(_examples(), top=6)
    bounded = detect_heads(_examples(), top=6, max_layer=-25)  # layers 0-5 of 30
    assert bounded.max_layer == 5 and full.max_layer is None
    assert len(bounded.scores) == 6 * 9 and all(int(h.split("-")[0]) <= 5 for h in bounded.scores)
    for head, score in bounded.scores.items():  # a head's score does not depend on where the forward stops
        assert score == pytest.approx(full.scores[head], abs=1e-9)
    expected = [h for h in full.scores if int(h.split("-")[0]) <= 5][:6]
    assert bounded.heads == expected
    path = tmp_path / "bounded.yaml"
    bounded.save(path)
    assert load_head_file(path)["max_layer"] == 5 and "max_layer" not in full.to_yaml()
    assert AttentionRetriever({"attention": {"heads": str(path)}}).head_selection.deepest <= 5


def test_detection_rejects_unusable_input() -> None:
    with pytest.raises(ValueError, match="max_layer \\(--max-layer\\) 30 is outside this model's 30 layers"):
        detect_heads(_examples(), max_layer=30)
    with pytest.raises(ValueError, match="top must be positive"):
        detect_heads(_examples(), top=0)
    with pytest.raises(ValueError, match="metric"):
        detect_heads(_examples(), metric="auc")  # type: ignore[arg-type]
    no_gold = [LabelledExample("x", "q?", [STORY], [], "toy")]
    with pytest.raises(ValueError, match="no usable example"):
        detect_heads(no_gold)


def _document_ids(name: str) -> list[str]:
    from shared_core.evaluation import load_real

    return list(dict.fromkeys(e.document_id for e in load_real(name, split="all", per_document=1)))


@pytest.mark.parametrize("name", ["covidqa", "qmsum"])
def test_detection_reads_real_sets_held_in_only_and_cut_to_fit(shared_data, name: str) -> None:
    examples = detection_examples([name], n=6, target_words=1500, per_document=2, real_max_words=600)
    assert len(examples) == 6 and {e.task for e in examples} == {name}
    held_in = set(real_split(_document_ids(name), "held-in"))
    assert {e.document_id for e in examples} <= held_in  # never a held-out document (the quality table's)
    per_doc = [sum(e.document_id == d for e in examples) for d in dict.fromkeys(e.document_id for e in examples)]
    assert max(per_doc) <= 2  # at most 2 questions per document, as many documents as it takes
    for e in examples:
        words = len(e.documents[0].split())
        assert words < 600 + 1500  # cut after the paragraph/turn reaching 600 words
        assert e.gold and all(g.end <= len(e.documents[0]) for g in e.gold)
    # a built task next to a real set: each source gives its own n
    mixed = detection_examples(["babi-qa1", name], n=2, target_words=300, per_document=2, real_max_words=600)
    assert [e.task for e in mixed][:2] == ["babi-qa1"] * 2 and len(mixed) == 4


def test_detect_heads_cli_accepts_a_real_set(shared_data, tmp_path) -> None:
    out = tmp_path / "heads.yaml"
    argv = ["detect-heads", "--data", "covidqa", "--examples", "1", "--per-doc", "1", "--real-max-words", "150"]
    assert cli_main([*argv, "--top", "3", "--out", str(out)]) == 0
    saved = load_head_file(out)
    assert len(saved["heads"]) == 3 and saved["n_examples"] == 1 and saved["sources"] == ["covidqa"]


def test_detect_heads_cli_refuses_a_layer_outside_the_model(tmp_path, capsys) -> None:
    out = tmp_path / "heads.yaml"
    argv = ["detect-heads", "--data", "babi-qa1", "--examples", "1", "--words", "100", "--max-layer", "30"]
    assert cli_main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "attnret: error: max_layer (--max-layer) 30 is outside this model's 30 layers (0-29, or negative from the end)"
    )
    assert "Traceback" not in err and not out.exists()


def test_auto_layers_read_only_the_layers_that_see_the_whole_context() -> None:
    from types import SimpleNamespace

    from transformers import Gemma3TextConfig, LlamaConfig

    from shared_core.engine.heads import auto_layers
    from shared_core.models.family import full_attention_layers

    gemma = SimpleNamespace(config=Gemma3TextConfig(num_hidden_layers=18, sliding_window=512))
    full = full_attention_layers(gemma)
    assert full == [5, 11, 17]  # Gemma 3: every sixth layer global, the rest see the last 512 tokens
    sel = select_heads(AttentionConfig(), 18, 4, "some/gemma-like-model", full)
    assert sel.layers == [11, 17] and sel.source == "layers"
    assert full_attention_layers(SimpleNamespace(config=LlamaConfig(num_hidden_layers=4))) is None
    assert auto_layers(30) == list(range(15, 30))  # all layers full: the usual band
    assert auto_layers(12, [2]) == [2]  # no full layer in the band: every full layer
    explicit = select_heads(AttentionConfig(layers=[0, 1]), 18, 4, "x", full)
    assert explicit.layers == [0, 1]  # explicit layers are the user's call
