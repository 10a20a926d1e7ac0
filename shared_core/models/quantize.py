"""`model.quantize: int8`: dynamic int8 activations and weights in the decoder's linear layers (torchao), on CPU.

Only the decoder stack's `nn.Linear` layers are quantized (q/k/v/o projections, MLP): the attention itself, the
embeddings and the LM head keep the model dtype, so the engine's capture hook sees the same float32 query and key
states. Measured in docs/models.md ("Dynamic int8 linear layers").
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import sys
import warnings
from typing import Any

import torch

from shared_core.config import ModelConfig
from shared_core.models import quiet_imports, registry
from shared_core.models.errors import ModelLoadError
from shared_core.models.family import decoder

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install torchao"
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""CPU flags of int8 dot-product instructions, where int8 matmuls beat float32 (without them they are emulated)."""


@functools.cache
def cpu_has_int8_dot(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU has VNNI or AMX-INT8 (`INT8_DOT_FLAGS` in Linux's /proc/cpuinfo; False where that is absent)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = {word for line in f if line.startswith("flags") for word in line.split()}
    except OSError:
        return False
    return any(flag in flags for flag in INT8_DOT_FLAGS)


def resolve(config: ModelConfig, device: torch.device, dtype: torch.dtype) -> str:
    """The quantization to load with: an explicit 'none'/'int8' as given; 'auto' = the named model's `cpu_quantize`
    on a CPU with int8 dot-product instructions (`cpu_has_int8_dot`) in float32, else 'none'. An 'auto' int8 without
    torchao installed loads unquantized, with a warning naming the install (an explicit 'int8' is a
    `ModelLoadError` then, in `apply`)."""
    if config.quantize != "auto":
        return config.quantize
    named = registry.configured(config.name)[1]
    if named is None or named.cpu_quantize == "none" or device.type != "cpu" or dtype != torch.float32:
        return "none"
    if not cpu_has_int8_dot():
        logger.info("model.quantize: auto reads %s in float32: this CPU has no VNNI / AMX-INT8", named.name)
        return "none"
    if importlib.util.find_spec("torchao") is None:
        logger.warning(
            "model.quantize: auto would read %s with int8 linear layers (about 2x faster on a CPU), but torchao is "
            "not installed; reading in float32. `%s`, or set model.quantize: none to silence this",
            named.name,
            INSTALL_HINT,
        )
        return "none"
    return named.cpu_quantize


def check_device(config: ModelConfig, device: torch.device) -> None:
    """int8 runs on the CPU only; refuse it where `model.device` resolved to a GPU (a ValueError naming the fix)."""
    if config.quantize == "int8" and device.type != "cpu":
        raise ValueError(
            f"model.quantize is 'int8' but model.device {config.device!r} resolves to {device.type!r}: the dynamic "
            "int8 layers run on the CPU only; set model.device: cpu, or model.quantize: none (on a GPU "
            "model.dtype: bfloat16 is the faster setting)"
        )


def _int8_config() -> Any:
    """torchao's dynamic int8 activation + int8 weight config, imported lazily and quietly (see `quiet_imports`)."""
    quiet_imports.install()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:
        raise ModelLoadError(f"model.quantize: 'int8' needs torchao: `{INSTALL_HINT}`") from exc
    return quantize_, Int8DynamicActivationInt8WeightConfig()


def apply(model: Any, setting: str) -> None:
    """Quantize the decoder's linear layers of `model` in place when `setting` is 'int8' ('none' leaves it).

    One layer at a time, handing the temporaries each one frees back to the system before the next: quantizing the
    whole stack at once left them in the allocator (the 0.5B's load peaked at 3.2 GB of RSS instead of 2.1)."""
    if setting == "none":
        return
    quantize_, int8 = _int8_config()
    for linear in [m for m in decoder(model).modules() if isinstance(m, torch.nn.Linear)]:
        quantize_(linear, int8)  # in place: the layer keeps its place in the model, its weight becomes int8
        _release_freed_memory()


@functools.cache
def _malloc_trim() -> Any:
    """glibc's `malloc_trim` (None elsewhere): returns freed heap memory to the system."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # a libc without it (musl)
        return None


def _release_freed_memory() -> None:
    """Give the memory freed so far back to the system where the C library can (glibc); a no-op elsewhere."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def is_quantized(weight: Any) -> bool:
    """Whether a linear layer's weight is a torchao quantized tensor (what `apply` leaves in each layer)."""
    return type(weight).__module__.startswith("torchao.")
