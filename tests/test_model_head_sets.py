"""Shipped head sets of the named offline models: `heads: auto` with a short name finds them (no model load)."""

from __future__ import annotations

import pytest

from shared_core.config import AttentionConfig, ModelConfig
from shared_core.engine.heads import load_head_file, select_heads, shipped_head_sets
from shared_core.models.loading import model_id

# short name -> (layers, query heads) of the model, for checking the file against its shape without loading it
SHIPPED = {"qwen2.5-coder-0.5b-instruct": (24, 14), "smollm2-135m-instruct": (30, 9)}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_heads_auto_with_a_short_name_selects_the_shipped_set(name: str) -> None:
    layers, heads = SHIPPED[name]
    path = shipped_head_sets()[model_id(ModelConfig(name=name))]
    assert path.name == f"{name}.yaml"
    data = load_head_file(path)
    sel = select_heads(AttentionConfig(), layers, heads, model_id(ModelConfig(name=name.upper())))
    assert sel.source == str(path)
    assert sum(len(h or ()) for h in sel.per_layer.values()) == len(data["heads"]) == 16
    # the read stops at the set's deepest layer, which is the depth its detection was bounded at
    assert sel.deepest == data["max_layer"] < layers - 1
    assert "detect-heads" in data["command"] and f"--max-layer {data['max_layer']}" in data["command"]
