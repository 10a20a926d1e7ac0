"""Query adapters named by a head-set file: loaded, checked, applied to the query part only, and kept out of caches
that do not hold them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from shared_core import AttentionRetriever, Document, RetrieverConfig
from shared_core.config import ConfigError
from shared_core.engine.heads import ADAPTER_DIR, file_adapter, load_head_file, shipped_head_sets
from shared_core.engine.query_adapter import QueryAdapter, digest_of, load_adapter, save_adapter
from shared_core.models.loading import SMOLLM2_ID

STORY = (
    "Mary moved to the bathroom. Sandra journeyed to the bedroom. John went to the kitchen. "
    "Mary moved to the hallway. Daniel travelled to the office. John went back to the garden. "
    "John moved to the bedroom. Bill picked up the apple. Fred went to the kitchen."
)
HEADS = ["17-4", "18-6", "17-3", "15-6", "8-0"]  # part of the shipped SmolLM2 set
QUERY = "Who picked up the apple?"


def _adapter(rank: int = 2, zero: bool = False, seed: int = 0, width: int = 576) -> QueryAdapter:
    """Random LoRA pairs on q_proj and o_proj of layers 0..18 of SmolLM2-135M (hidden size 576)."""
    gen = torch.Generator().manual_seed(seed)
    pairs = {}
    for layer in range(19):
        for name in ("q_proj", "o_proj"):
            a = torch.randn(rank, width, generator=gen) * 0.05
            b = torch.zeros(576, rank) if zero else torch.randn(576, rank, generator=gen) * 0.05
            pairs[(layer, name)] = (a, b)
    return QueryAdapter(pairs, 2.0, digest_of(pairs, 2.0), meta={"model": "test"})


def _head_set(tmp_path: Path, adapter: QueryAdapter | None, name: str = "heads.yaml") -> Path:
    lines = ["model: test", "heads:", *[f"- {h}" for h in HEADS]]
    if adapter is not None:
        save_adapter(tmp_path / f"{name}.safetensors", adapter)
        lines.append(f"adapter: {name}.safetensors")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _attention(r: AttentionRetriever, query: str = QUERY, text: str = STORY) -> np.ndarray:
    return np.array([h.scores["attention"] for h in r.score_units(query, text)])


def test_an_adapter_file_round_trips(tmp_path: Path) -> None:
    adapter = _adapter()
    save_adapter(tmp_path / "a.safetensors", adapter)
    loaded = load_adapter(tmp_path / "a.safetensors")
    assert loaded.digest == adapter.digest and loaded.scale == 2.0 and loaded.deepest == 18
    assert loaded.meta["model"] == "test"
    for key, (a, b) in adapter.pairs.items():
        assert torch.equal(loaded.pairs[key][0], a) and torch.equal(loaded.pairs[key][1], b)
    assert not list(tmp_path.glob(".*tmp"))  # written through a temporary file, renamed


def test_bad_adapter_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_adapter(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="not a readable safetensors"):
        load_adapter(tmp_path / "junk.safetensors")
    save_file({"layers.0.q_proj.lora_A": torch.zeros(2, 4)}, str(tmp_path / "half.safetensors"), {"scale": "1.0"})
    with pytest.raises(ConfigError, match="no matching lora_B"):
        load_adapter(tmp_path / "half.safetensors")
    save_file({"weight": torch.zeros(2, 4)}, str(tmp_path / "other.safetensors"), {"scale": "1.0"})
    with pytest.raises(ConfigError, match="unexpected tensor 'weight'"):
        load_adapter(tmp_path / "other.safetensors")
    pairs = {"layers.0.q_proj.lora_A": torch.zeros(2, 4), "layers.0.q_proj.lora_B": torch.zeros(4, 2)}
    save_file(pairs, str(tmp_path / "noscale.safetensors"))
    with pytest.raises(ConfigError, match="no numeric 'scale'"):
        load_adapter(tmp_path / "noscale.safetensors")


def test_an_adapter_for_another_model_is_refused(tmp_path: Path) -> None:
    heads = _head_set(tmp_path, _adapter(width=896))  # a 0.5B-sized adapter on SmolLM2
    r = AttentionRetriever({"attention": {"heads": str(heads), "query_adapter": True}})
    with pytest.raises(ConfigError, match="trained for another model"):
        r.score_units(QUERY, STORY)


def test_the_adapter_changes_the_query_part_only(tmp_path: Path) -> None:
    frozen = AttentionRetriever({"attention": {"heads": str(_head_set(tmp_path, None, "plain.yaml"))}})
    zero_heads, lora_heads = _head_set(tmp_path, _adapter(zero=True), "zero.yaml"), _head_set(tmp_path, _adapter())
    zero = AttentionRetriever({"attention": {"heads": str(zero_heads), "query_adapter": True}})
    adapted = AttentionRetriever({"attention": {"heads": str(lora_heads), "query_adapter": True}})
    off = AttentionRetriever({"attention": {"heads": str(lora_heads)}})  # query_adapter is off by default
    assert adapted.head_selection.adapter is not None and off.head_selection.adapter is None
    base = _attention(frozen)
    np.testing.assert_allclose(_attention(zero), base, atol=1e-6)  # B = 0: the frozen model, through the hooks
    np.testing.assert_allclose(_attention(off), base, atol=1e-6)
    moved = _attention(adapted)
    assert np.all(np.isfinite(moved)) and not np.allclose(moved, base, atol=1e-4)
    # caches shared between the configs: the document's read is shared, the query results are not
    frozen.share_caches(adapted)
    reads = frozen.stats["prefills"]
    np.testing.assert_allclose(_attention(frozen), base, atol=1e-6)
    assert frozen.stats["prefills"] == reads  # the adapted retriever's read of the document served it
    np.testing.assert_allclose(_attention(adapted), moved, atol=1e-6)
    np.testing.assert_allclose(_attention(frozen), base, atol=1e-6)  # the frozen model again after the adapter ran


def test_a_grown_document_keeps_its_tail_frozen(tmp_path: Path) -> None:
    heads = str(_head_set(tmp_path, _adapter(seed=1)))
    within = AttentionRetriever({"attention": {"heads": heads, "query_adapter": True}})
    within.score_units(QUERY, STORY)
    grown = STORY + " Then Mary went back to the kitchen and picked up the milk."
    before = dict(within.stats)
    hits = within.score_units("Where is the milk?", grown)
    assert within.stats["forwards"] - before["forwards"] == 1  # the new tokens rode with the query parts
    fresh = AttentionRetriever({"attention": {"heads": heads, "query_adapter": True}})
    expected = fresh.score_units("Where is the milk?", Document(grown))
    np.testing.assert_allclose(
        [h.scores["attention"] for h in hits], [h.scores["attention"] for h in expected], atol=1e-4
    )


def test_past_the_window_the_adapter_applies_too(tmp_path: Path) -> None:
    heads = str(_head_set(tmp_path, _adapter(seed=2)))
    cascade = {"sink_tokens": 8, "cascades": 2, "window": 32, "stride": 64, "reuse": False}
    long = "\n\n".join([STORY] * 3)
    on = {"heads": heads, "query_adapter": True}
    adapted = AttentionRetriever({"model": {"max_tokens": 160}, "attention": on, "cascade": cascade})
    off = AttentionRetriever(
        {"model": {"max_tokens": 160}, "attention": {"heads": heads, "query_adapter": False}, "cascade": cascade}
    )
    a, b = _attention(adapted, text=long), _attention(off, text=long)
    assert adapted.stats["cascade_passes"] == 1
    assert np.all(np.isfinite(a)) and not np.allclose(a, b, atol=1e-4)


def test_the_shipped_smollm2_set_names_its_adapter_in_the_user_cache_and_it_is_opt_in(
    retriever: AttentionRetriever, tmp_path: Path
) -> None:
    """The shipped SmolLM2 set names an adapter that is not in the package (weights): it is looked up in the user
    cache's adapters/ folder; missing there, the opt-in is a ConfigError naming the training command."""
    assert retriever.head_selection.adapter is None  # off by default: the default's scores are the frozen model's
    example = Path(__file__).parent.parent / "examples" / "configs" / "smollm2-long-documents.yaml"
    config = RetrieverConfig.from_yaml(example)  # the documented one-line opt-in, with a cache of the test's own
    config = config.model_copy(update={"model": config.model.model_copy(update={"cache_dir": str(tmp_path)})})
    name = load_head_file(shipped_head_sets()[SMOLLM2_ID])["adapter"]
    with pytest.raises(ConfigError, match=r"names the query adapter .*benchmarks\.query_adapter.*--save .*adapters"):
        AttentionRetriever(config).warm_up()
    trained = _adapter(seed=3)
    save_adapter(tmp_path / ADAPTER_DIR / name, replace(trained, meta={"model": SMOLLM2_ID}))
    on = AttentionRetriever(config)
    selection = on.head_selection
    assert selection.source.endswith("smollm2-135m-instruct.yaml") and selection.adapter is not None
    assert selection.adapter.deepest == selection.deepest == 18  # the read still stops at the head set's depth
    assert selection.adapter.meta["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    adapted, frozen = _attention(on), _attention(retriever)
    assert np.all(np.isfinite(adapted)) and not np.allclose(adapted, frozen, atol=1e-4)


def test_the_shipped_1_5b_set_names_its_adapter_and_the_example_config_opts_in(tmp_path: Path) -> None:
    """The 1.5B's shipped set names an adapter kept out of the package (weights): missing from the user cache, it is a
    ConfigError naming the training command; present, it is the one loaded. The example config is the opt-in. No
    model is loaded (the adapter's shapes are checked against the model when it is installed)."""
    path = shipped_head_sets()["Qwen/Qwen2.5-Coder-1.5B-Instruct"]
    data = load_head_file(path)
    name = data["adapter"]
    assert name == "qwen2.5-coder-1.5b-instruct.adapter.safetensors" and not (path.parent / name).exists()
    with pytest.raises(ConfigError, match=r"names the query adapter .*benchmarks\.query_adapter.*--save .*adapters"):
        file_adapter(data, path, tmp_path / ADAPTER_DIR)
    saved = _adapter(seed=5)
    save_adapter(tmp_path / ADAPTER_DIR / name, saved)
    loaded = file_adapter(data, path, tmp_path / ADAPTER_DIR)
    assert loaded is not None and loaded.digest == saved.digest
    example = Path(__file__).parent.parent / "examples" / "configs" / "qwen2.5-coder-1.5b-query-adapter.yaml"
    config = RetrieverConfig.from_yaml(example)
    assert config.model.name == "qwen2.5-coder-1.5b-instruct" and config.attention.query_adapter is True
    assert config.attention.heads == "auto"  # the shipped set (and its fusion), which names the adapter
