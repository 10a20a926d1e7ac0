"""Stopping a model read from another thread: a read that runs beside the caller's work (`views.read_ahead`) is
stopped at its next attention layer when the caller fails or is interrupted (Ctrl-C), instead of running on."""

from __future__ import annotations

import signal
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


@contextmanager
def ctrl_c_stops(stop: threading.Event) -> Iterator[threading.Event]:
    """While inside, Ctrl-C (SIGINT) also sets `stop` and the yielded event before raising KeyboardInterrupt as usual.

    Python drops a KeyboardInterrupt that lands in a finalizer (`__del__`, a weakref callback) or in C code that
    clears errors, so a Ctrl-C during the caller's work could be lost while the read ran on; the flag keeps it. Only
    the main thread can set signal handlers, and a handler the application installed is left alone.
    """
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield interrupted
        return

    def on_sigint(signum: int, frame: object) -> None:
        interrupted.set()
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
