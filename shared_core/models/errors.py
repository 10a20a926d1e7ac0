"""The models wing's error: what could not be loaded and what to install or pass instead (its own module, so that
the loader and the registry of named models both raise it without importing each other)."""

from __future__ import annotations

import errno
from pathlib import Path


class ModelLoadError(ValueError):
    """A model could not be found or loaded; the message says what to install or pass instead."""


def cache_error(root: Path, exc: OSError, what: str) -> ModelLoadError:
    """A `ModelLoadError` for a model cache that cannot be written (full disk, no permission), naming ATTNRET_CACHE."""
    reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or type(exc).__name__)
    return ModelLoadError(
        f"{what} in {str(root)!r}: {reason}. Point ATTNRET_CACHE (or model.cache_dir) at a writable folder with "
        "about 1 GB free."
    )
