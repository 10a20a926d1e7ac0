"""Drop the known, harmless lines torchao prints when imported, so that library code prints nothing unless asked.

transformers imports torchao whenever it is installed (a core dependency, for `model.quantize: int8`), from its model
code: torchao then logs "Failed to load .../torchao/_C_*.so" for its GPU kernels on a CPU build of torch and "Detected
no triton" (seen where the application configured logging), and torch logs a deprecation line per Enum torchao
registers. Only those messages are filtered, on the loggers that emit them; everything else they log still
passes. Imports only `logging`, so `import shared_core` stays torch-free.
"""

from __future__ import annotations

import logging

_LOGGERS = ("torchao", "torchao.kernel.intmm", "torch.utils._pytree")


class _TorchaoImportNoise(logging.Filter):
    """Refuses torchao's missing-GPU-kernel and missing-Triton lines and torch's Enum-registration deprecations."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the two known import-time messages, True for any other record."""
        message = record.getMessage()
        missing_kernel = message.startswith("Failed to load") and "torchao" in message and "_C" in message
        missing_triton = "Detected no triton" in message
        enum_notice = "is an Enum subclass and is now natively supported by torch.compile" in message
        return not (missing_kernel or missing_triton or enum_notice)


_FILTER = _TorchaoImportNoise()


def install() -> None:
    """Attach the filter to the loggers torchao's import writes to (idempotent; before transformers imports it)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
