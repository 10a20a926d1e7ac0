"""`model.quantize: int8` with the real default model (SmolLM2-135M): the config's checks, the decoder's linear
layers quantized by torchao (and nothing else), scores that still find an obvious needle as float32 does, cache keys
that keep quantized and float32 states apart, and a load that prints nothing (torchao's import lines included)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.model_settings import model_setting, setting_parts
from shared_core import AttentionRetriever, RetrieverConfig
from shared_core.config import ConfigError, ModelConfig
from shared_core.models import loading, quantize
from tests.texts import ATTENTION_ONLY, NEEDLE, NEEDLE_QUERY, VILLAGE

FILLER = VILLAGE
QUERY = NEEDLE_QUERY
DOC = " ".join(FILLER[:4]) + "\n\n" + " ".join([*FILLER[4:6], NEEDLE, *FILLER[6:8]])
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def int8() -> Iterator[AttentionRetriever]:
    """An int8 retriever (attention alone); its model leaves the process-wide cache after this module."""
    r = AttentionRetriever({"model": {"quantize": "int8"}, **ATTENTION_ONLY})
    r.warm_up()
    yield r
    for key in [k for k, loaded in loading._models.items() if loaded.quantize != "none"]:
        del loading._models[key]


def test_config_takes_auto_none_and_int8_and_refuses_the_rest() -> None:
    assert ModelConfig().quantize == "auto"
    assert ModelConfig(quantize="int8", dtype="float32").quantize == "int8"
    assert ModelConfig(quantize="auto", dtype="bfloat16").quantize == "auto"  # auto is none in half precision
    with pytest.raises(ConfigError, match=r"model\.quantize is 'int8' but model\.dtype is 'bfloat16'.*float32"):
        RetrieverConfig.model_validate({"model": {"quantize": "int8", "dtype": "bfloat16"}})
    with pytest.raises(ConfigError, match=r"model\.quantize: Input should be 'auto', 'none' or 'int8'"):
        RetrieverConfig.model_validate({"model": {"quantize": "int4"}})


def test_auto_is_the_named_models_cpu_setting_on_a_cpu_in_float32(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cpu, gpu, f32, bf16 = torch.device("cpu"), torch.device("cuda"), torch.float32, torch.bfloat16
    big, small = ModelConfig(name="qwen2.5-coder-1.5b-instruct"), ModelConfig()
    assert quantize.resolve(big, cpu, f32) == "int8"
    assert quantize.resolve(ModelConfig(name="Qwen2.5-Coder-1.5B-Instruct"), cpu, f32) == "int8"  # names ignore case
    assert [quantize.resolve(big, d, t) for d, t in ((gpu, bf16), (gpu, f32), (cpu, bf16))] == ["none"] * 3
    assert quantize.resolve(small, cpu, f32) == "none"  # SmolLM2 gains nothing from int8 (docs/models.md)
    assert quantize.resolve(ModelConfig(name="qwen2.5-coder-1.5b-instruct", quantize="none"), cpu, f32) == "none"
    assert quantize.resolve(ModelConfig(quantize="int8"), cpu, f32) == "int8"
    monkeypatch.setattr(quantize, "cpu_has_int8_dot", lambda: False)  # a CPU without VNNI / AMX-INT8
    assert quantize.resolve(big, cpu, f32) == "none"
    assert quantize.resolve(ModelConfig(name="qwen2.5-coder-1.5b-instruct", quantize="int8"), cpu, f32) == "int8"
    monkeypatch.setattr(quantize, "cpu_has_int8_dot", lambda: True)
    monkeypatch.setattr(quantize.importlib.util, "find_spec", lambda name, *a: None)  # torchao not installed
    with caplog.at_level("WARNING", logger="shared_core.models.quantize"):
        assert quantize.resolve(big, cpu, f32) == "none"
    assert "torchao is not installed" in caplog.text and "pip install torchao" in caplog.text


def test_int8_on_a_gpu_device_is_refused_naming_the_fields() -> None:
    config = ModelConfig(quantize="int8")
    for device in ("cuda", "mps"):
        with pytest.raises(ValueError, match=rf"model\.quantize is 'int8' but model\.device .* '{device}'.*cpu"):
            quantize.check_device(config, torch.device(device))
    quantize.check_device(config, torch.device("cpu"))
    quantize.check_device(ModelConfig(), torch.device("cuda"))  # no quantization: any device


def test_int8_dot_products_are_read_from_the_cpu_flags(tmp_path: Path) -> None:
    """VNNI or AMX-INT8 in the flags line of /proc/cpuinfo (a file without them, or none at all: False)."""
    cases = {"flags\t: fpu sse avx2 avx512_vnni\n": True, "flags : avx2 amx_int8 amx_tile\n": True}
    cases |= {"flags : fpu avx2 avx512f\nbugs : avx_vnni\n": False, "": False}
    for i, (text, want) in enumerate(cases.items()):
        (tmp_path / f"cpuinfo{i}").write_text(text)
        assert quantize.cpu_has_int8_dot(str(tmp_path / f"cpuinfo{i}")) is want, text
    assert quantize.cpu_has_int8_dot(str(tmp_path / "absent")) is False


def test_missing_torchao_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # what an uninstalled package imports as
    with pytest.raises(loading.ModelLoadError, match=r"model\.quantize.*pip install torchao"):
        quantize.apply(torch.nn.Sequential(), "int8")


def test_only_the_decoders_linear_layers_are_quantized(int8: AttentionRetriever, retriever: AttentionRetriever) -> None:
    loaded = int8.model
    assert loaded is not retriever.model and loaded.quantize == "int8"
    linears = {n: m for n, m in loaded.decoder.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears and all(quantize.is_quantized(m.weight) for m in linears.values())
    assert not quantize.is_quantized(loaded.model.lm_head.weight)
    assert not quantize.is_quantized(loaded.decoder.embed_tokens.weight)
    assert loaded.precision == "torch.float32+int8" and retriever.model.precision == "torch.float32"


def test_int8_scores_are_finite_and_find_the_needle_like_float32(
    int8: AttentionRetriever, retriever: AttentionRetriever
) -> None:
    float32 = AttentionRetriever(RetrieverConfig.model_validate(ATTENTION_ONLY))  # the session's float32 model
    hits = {name: r.score_units(QUERY, DOC) for name, r in (("int8", int8), ("float32", float32))}
    for name, units in hits.items():
        scores = np.array([h.score for h in units])
        assert np.isfinite(scores).all(), name
        assert max(units, key=lambda h: h.score).text == NEEDLE, name
    assert float32.model is retriever.model


def test_int8_reads_the_document_in_short_steps(int8: AttentionRetriever, monkeypatch: pytest.MonkeyPatch) -> None:
    """int8 prefills in `QUANTIZED_PREFILL_CHUNK` steps (its per-step temporaries stay small), float32 in one pass."""
    from shared_core.engine import attention_engine

    monkeypatch.setattr(attention_engine, "QUANTIZED_PREFILL_CHUNK", 32)
    n_tokens = len(int8.model.tokenizer(DOC)["input_ids"])
    stepped = AttentionRetriever(int8.config)  # the module's int8 model, fresh caches
    float32 = AttentionRetriever(RetrieverConfig.model_validate(ATTENTION_ONLY))
    before = float32.stats["forwards"]
    for r in (stepped, float32):
        r.score_units(QUERY, DOC + " (steps)")
    assert stepped.stats["prefills"] == 1 and stepped.stats["forwards"] >= n_tokens // 32
    assert float32.stats["forwards"] - before <= 3  # one prefill pass, then the query and N/A parts


def test_int8_does_not_reuse_a_float32_prefill_of_shared_caches(int8: AttentionRetriever) -> None:
    """Cache keys carry the precision (`LoadedModel.precision`): an int8 retriever sharing a float32 one's caches
    reads the document itself instead of taking the float32 prefill, whole or as a shared prefix."""
    float32 = AttentionRetriever(RetrieverConfig.model_validate(ATTENTION_ONLY))
    shared = AttentionRetriever(int8.config)  # this module's int8 model, float32's caches
    shared.share_caches(float32)
    float32.score_units(QUERY, DOC)
    shared.score_units(QUERY, DOC)
    assert (float32.stats["prefills"], shared.stats["prefills"]) == (1, 1)
    assert shared.stats["prefix_tokens_reused"] == 0  # nor any prefix of float32's cache
    shared.score_units(QUERY, DOC)
    assert shared.stats["prefills"] == 1  # its own prefill is reused


def test_loading_and_scoring_int8_prints_nothing() -> None:
    """In a fresh process, so torchao is imported (by transformers) during the load: nothing on stdout or stderr, even
    with logging configured at WARNING (torchao's own loggers then reach the root handler)."""
    code = (
        "import logging\n"
        "logging.basicConfig()\n"
        "from shared_core import AttentionRetriever\n"
        "r = AttentionRetriever({'model': {'quantize': 'int8'}, 'entities': {'enabled': False}})\n"
        f"r.score_units({QUERY!r}, {DOC!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (done.stdout, done.stderr) == ("", "")


def test_the_benchmarks_int8_setting_is_float32_with_int8_layers() -> None:
    """`benchmarks.model_settings --settings default,int8`: int8 reads in float32; a refused mix fails before any
    process is spawned."""
    assert setting_parts("t1+int8") == {"t1", "int8"}
    assert setting_parts("frozen+int8") == {"frozen", "int8"}  # the question read without the query adapter
    assert setting_parts("adapter") == {"adapter"}  # with it, required
    with pytest.raises(ValueError, match=r"both off \(frozen\) and on \(adapter\)"):
        setting_parts("frozen+adapter")
    assert model_setting("m", {"int8"}) == {"name": "m", "dtype": "float32", "quantize": "int8"}
    assert model_setting("m", set())["quantize"] == "none"
    with pytest.raises(ConfigError, match=r"model\.dtype is 'bfloat16'"):
        setting_parts("bf16+int8")
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['int4'\]"):
        setting_parts("int4")
