"""Query adapters named by a head-set file: loaded, checked, applied to the query part only, and kept out of caches
that do not hold them."""

from __future__ import annotations

import os
import stat
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
    previous = os.umask(0o022)
    try:
        save_adapter(tmp_path / "a.safetensors", adapter)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.safetensors").stat().st_mode) == 0o644  # as any new file, not owner-only
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
    adapted = AttentionRetriever({"attention": {"heads": str(lora_heads)}})  # auto: it is beside the file
    off = AttentionRetriever({"attention": {"heads": str(lora_heads), "query_adapter": False}})
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
    """The shipped SmolLM2 set names an adapter that is not in the package: `query_adapter: auto` (the default) reads
    the frozen model even when the user cache holds one; `true` looks it up in the user cache's adapters/ folder,
    and missing there it is a ConfigError naming the training command."""
    assert retriever.head_selection.adapter is None  # auto, and none ships beside the SmolLM2 set
    example = Path(__file__).parent.parent / "examples" / "configs" / "smollm2-long-documents.yaml"
    config = RetrieverConfig.from_yaml(example)  # the documented one-line opt-in, with a cache of the test's own
    config = config.model_copy(update={"model": config.model.model_copy(update={"cache_dir": str(tmp_path)})})
    name = load_head_file(shipped_head_sets()[SMOLLM2_ID])["adapter"]
    with pytest.raises(ConfigError, match=r"names the query adapter .*attnret train-adapter.*adapters"):
        AttentionRetriever(config).warm_up()
    trained = _adapter(seed=3)
    save_adapter(tmp_path / ADAPTER_DIR / name, replace(trained, meta={"model": SMOLLM2_ID}))
    auto = config.model_copy(update={"attention": config.attention.model_copy(update={"query_adapter": "auto"})})
    assert AttentionRetriever(auto).head_selection.adapter is None  # the cache's copy is used only when asked for
    on = AttentionRetriever(config)
    selection = on.head_selection
    assert selection.source.endswith("smollm2-135m-instruct.yaml") and selection.adapter is not None
    assert selection.adapter.deepest == selection.deepest == 18  # the read still stops at the head set's depth
    assert selection.adapter.meta["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    adapted, frozen = _attention(on), _attention(retriever)
    assert np.all(np.isfinite(adapted)) and not np.allclose(adapted, frozen, atol=1e-4)


def test_the_1_5b_set_names_its_adapter_for_documents_in_the_user_cache(tmp_path: Path) -> None:
    """The 1.5B's shipped set names an adapter kept out of the package (weights), for documents only: under
    `query_adapter: auto` (the default) a missing or cached-only adapter reads frozen; `true` requires it from the
    user cache (a ConfigError naming the training command when missing); `false` is the example config. No model is
    loaded (the adapter's shapes are checked against the model when it is installed)."""
    path = shipped_head_sets()["Qwen/Qwen2.5-Coder-1.5B-Instruct"]
    data = load_head_file(path)
    name = data["adapter"]
    assert name == "qwen2.5-coder-1.5b-instruct.adapter.safetensors" and not (path.parent / name).exists()
    assert data["adapter_modes"] == ["documents"]  # candidate sets are read frozen (it lost held-in reranking)
    with pytest.raises(ConfigError, match=r"names the query adapter .*attnret train-adapter.*adapters"):
        file_adapter(data, path, tmp_path / ADAPTER_DIR, required=True)
    saved = _adapter(seed=5)
    save_adapter(tmp_path / ADAPTER_DIR / name, saved)
    loaded = file_adapter(data, path, tmp_path / ADAPTER_DIR, required=True)
    assert loaded is not None and loaded.digest == saved.digest
    assert file_adapter(data, path, tmp_path / ADAPTER_DIR, required=False) is None  # auto: only beside the file
    assert RetrieverConfig().attention.query_adapter == "auto"
    example = Path(__file__).parent.parent / "examples" / "configs" / "qwen2.5-coder-1.5b-frozen.yaml"
    config = RetrieverConfig.from_yaml(example)
    assert config.model.name == "qwen2.5-coder-1.5b-instruct" and config.attention.query_adapter is False
    assert config.attention.heads == "auto"  # the shipped set (and its fusion), without its adapter


def test_an_adapter_named_but_absent_is_an_error_only_when_required(tmp_path: Path) -> None:
    heads = _head_set(tmp_path, None)
    data = {**load_head_file(heads), "adapter": "gone.safetensors"}
    assert file_adapter(data, heads, tmp_path / ADAPTER_DIR, required=False) is None
    with pytest.raises(ConfigError, match=r"names the query adapter 'gone.safetensors'.*query_adapter to auto"):
        file_adapter(data, heads, tmp_path / ADAPTER_DIR, required=True)


def test_an_adapter_kept_to_documents_reads_candidate_sets_frozen(tmp_path: Path) -> None:
    """`adapter_modes: [documents]` (the shipped 1.5B set's): units of documents are read through the adapter,
    candidate sets by the frozen model, so their scores (and calibration) are the frozen model's."""
    path = _head_set(tmp_path, _adapter(seed=4))
    path.write_text(path.read_text(encoding="utf-8") + "adapter_modes: [documents]\n", encoding="utf-8")
    docs_only = AttentionRetriever({"attention": {"heads": str(path)}})
    frozen = docs_only.sibling(
        RetrieverConfig.model_validate({"attention": {"heads": str(path), "query_adapter": False}})
    )
    assert docs_only.head_selection.adapter is not None and not docs_only.head_selection.candidate_adapter
    assert not np.allclose(_attention(docs_only), _attention(frozen), atol=1e-4)
    candidates = STORY.split(". ")
    on, off = (r.score_candidates(QUERY, candidates) for r in (docs_only, frozen))
    np.testing.assert_allclose([h.scores["attention"] for h in on], [h.scores["attention"] for h in off], atol=1e-6)
    np.testing.assert_allclose([h.score for h in on], [h.score for h in off], atol=1e-6)
    both = _head_set(tmp_path, _adapter(seed=4), "both.yaml")  # the default: candidate sets read through it too
    adapted = AttentionRetriever({"attention": {"heads": str(both)}}).score_candidates(QUERY, candidates)
    assert not np.allclose([h.scores["attention"] for h in adapted], [h.scores["attention"] for h in off], atol=1e-4)


@pytest.mark.parametrize("modes", ["[]", "[queries]", "documents"])
def test_bad_adapter_modes_are_config_errors(tmp_path: Path, modes: str) -> None:
    path = _head_set(tmp_path, None)
    path.write_text(path.read_text(encoding="utf-8") + f"adapter_modes: {modes}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'adapter_modes' must be a non-empty list of \['documents', 'candidates'\]"):
        load_head_file(path)
