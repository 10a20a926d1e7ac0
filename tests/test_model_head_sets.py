"""Shipped head sets of the named offline models: `heads: auto` with a short name finds them (no model load)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared_core.config import AttentionConfig, ModelConfig, RetrieverConfig
from shared_core.engine.heads import load_head_file, select_heads, shipped_head_sets
from shared_core.models.loading import model_id

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


def test_the_1_5b_example_config_carries_the_learned_fusion_weights() -> None:
    """examples/configs/qwen2.5-coder-1.5b-instruct.yaml is a valid config whose fusion weights are the learned
    LSEPair min-max row of the run its comment names (rounded to 4 places there), so the two cannot drift."""
    root = Path(__file__).resolve().parent.parent
    config = RetrieverConfig.from_yaml(root / "examples/configs/qwen2.5-coder-1.5b-instruct.yaml")
    assert model_id(config.model) == "Qwen/Qwen2.5-Coder-1.5B-Instruct" and config.attention.heads == "auto"
    run = json.loads((root / "benchmarks/results/training/learn_fusion_qwen2.5-coder-1.5b-trained.json").read_text())
    learned = next(r for r in run["rows"] if r["row"] == "learned lsepair, minmax")
    assert [config.fusion.weights[v] for v in run["views"]] == learned["weights"]
    assert config.fusion.method == "weighted"  # the weighted mean of min-max views: the form the weights were fit in
