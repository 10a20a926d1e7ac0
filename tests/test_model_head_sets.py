"""Shipped head sets of the named offline models: `heads: auto` with a short name finds them (no model load)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared_core.config import AttentionConfig, ModelConfig, RetrieverConfig
from shared_core.config.sections import DEFAULT_FUSION_WEIGHTS
from shared_core.engine.heads import load_head_file, select_heads, shipped_head_sets
from shared_core.models.loading import model_id
from shared_core.views.model_fusion import model_fusion

# short name -> (layers, query heads) of the model, for checking the file against its shape without loading it
SHIPPED = {
    "qwen2.5-coder-0.5b-instruct": (24, 14),
    "qwen2.5-coder-1.5b-instruct": (28, 12),
    "smollm2-135m-instruct": (30, 9),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_heads_auto_with_a_short_name_selects_the_shipped_set(name: str) -> None:
    layers, heads = SHIPPED[name]
    path = shipped_head_sets()[model_id(ModelConfig(name=name))]
    assert path.name == f"{name}.yaml"
    data = load_head_file(path)
    sel = select_heads(AttentionConfig(), layers, heads, model_id(ModelConfig(name=name.upper())))
    assert sel.source == str(path)
    weights = data.get("weights")
    read = [h for h in data["heads"] if not weights or weights[h] > 0]
    assert sum(len(h or ()) for h in sel.per_layer.values()) == len(read) >= 4
    # the read stops at the deepest head read, within the band the set was detected or trained in
    deepest = max(int(h.split("-")[0]) for h in read)
    assert sel.deepest == deepest <= data["max_layer"] < layers - 1
    made_by = "benchmarks.train_heads" if weights else "detect-heads"
    assert made_by in data["command"]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_trained_set_is_trained_on_held_in_data(name: str) -> None:
    """A weighted (trained) shipped set: weights summing to 1 over its heads, held-in sources only, and a validation
    nDCG@10 above its heads' unweighted one (what `ship` required of it)."""
    data = load_head_file(shipped_head_sets()[model_id(ModelConfig(name=name))])
    if not data.get("weights"):
        pytest.skip(f"{name}'s shipped set is detected, not trained")
    assert set(data["weights"]) == set(data["heads"]) and abs(sum(data["weights"].values()) - 1) < 1e-4
    assert data["sources"] and all("held-in" in s for s in data["sources"])
    assert data["training"]["validation_ndcg"] > data["training"]["validation_ndcg_equal_weights"]


def test_the_1_5b_fusion_weights_are_the_learned_ones_for_documents_and_the_defaults_for_candidates() -> None:
    """`fusion.weights: auto` with the 1.5B by name (the example config too) fuses documents with the learned LSEPair
    min-max row of the run its head-set file names, and candidate sets with the default weights; naming that file by
    path keeps them; explicit weights, every head, explicit layers or a file without them turn them off. No model is
    loaded."""
    root = Path(__file__).resolve().parent.parent
    run = json.loads((root / "benchmarks/results/training/learn_fusion_qwen2.5-coder-1.5b-trained.json").read_text())
    learned = next(r for r in run["rows"] if r["row"] == "learned lsepair, minmax")
    example = RetrieverConfig.from_yaml(root / "examples/configs/qwen2.5-coder-1.5b-instruct.yaml")
    for config in (example, RetrieverConfig.model_validate({"model": {"name": "qwen2.5-coder-1.5b-instruct"}})):
        fusion = model_fusion(config)
        assert [fusion.documents.weights[v] for v in run["views"]] == learned["weights"]
        assert fusion.documents.method == "weighted"  # the weighted mean of min-max views: the form they were fit in
        assert fusion.candidates.weights == DEFAULT_FUSION_WEIGHTS
        assert fusion.source and fusion.source.endswith("qwen2.5-coder-1.5b-instruct.yaml")
    own = {"attention": 1.0, "dense": 1.0}
    for override in ({"fusion": {"weights": own}}, {"attention": {"heads": "all"}}, {"attention": {"layers": [14]}}):
        fusion = model_fusion(
            RetrieverConfig.model_validate({"model": {"name": "qwen2.5-coder-1.5b-instruct"}, **override})
        )
        want = own if "fusion" in override else DEFAULT_FUSION_WEIGHTS
        assert fusion.documents.weights == fusion.candidates.weights == want and fusion.calibration is None
    shipped = model_fusion(RetrieverConfig.model_validate({"model": {"name": "qwen2.5-coder-1.5b-instruct"}}))
    named = RetrieverConfig.model_validate(
        {"model": {"name": "qwen2.5-coder-1.5b-instruct"}, "attention": {"heads": shipped.source}}
    )
    assert model_fusion(named) == shipped  # a head-set file named by path brings its own fusion and calibration
    trained_first = root / "benchmarks/results/training/heads_qwen1.5b_trained.yaml"
    plain = model_fusion(
        named.model_copy(update={"attention": named.attention.model_copy(update={"heads": str(trained_first)})})
    )
    assert plain.documents.weights == DEFAULT_FUSION_WEIGHTS and plain.calibration is None  # a file without them
    smollm2 = model_fusion(RetrieverConfig())
    assert smollm2.documents.weights == smollm2.candidates.weights == DEFAULT_FUSION_WEIGHTS and not smollm2.source
