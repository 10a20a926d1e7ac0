"""Stopping a model read from another thread: a read that runs beside the caller's work (`views.read_ahead`) is
stopped at its next attention layer when the caller fails or is interrupted (Ctrl-C), instead of running on."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_stop: ContextVar[threading.Event | None] = ContextVar("attnret_stop", default=None)


class ReadStopped(Exception):
    """Raised inside a read whose caller asked it to stop; never reaches a user (the caller's error does)."""


@contextmanager
def stoppable(event: threading.Event) -> Iterator[None]:
    """Reads run in this context stop (raise `ReadStopped`) at their next attention layer once `event` is set."""
    token = _stop.set(event)
    try:
        yield
    finally:
        _stop.reset(token)


def check() -> None:
    """Raise `ReadStopped` if this context's read was asked to stop (the capture hook calls it at every layer)."""
    event = _stop.get()
    if event is not None and event.is_set():
        raise ReadStopped
