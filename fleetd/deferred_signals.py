"""Hold signals from process start until the event loop receives them.

`fleetd run` and `fleetd once` take a few hundred milliseconds to import
their modules before the event loop listens for signals. A SIGTERM in that
window would kill the process with the default action (exit status -15),
a SIGINT would raise KeyboardInterrupt in whatever was importing, and a
SIGHUP (a reload request to the daemon) would kill it.

Inside `deferred()`, a handler only records the signal. `redeliver`,
called once the loop's receiver is in place, raises each recorded signal
again, so the receiver handles it like any other: SIGTERM and SIGINT
stop gracefully with exit status 0, and SIGHUP reloads. A signal that arrives after the receiver closed is recorded
and dropped when `deferred()` exits, because the process is stopping then.
With `restore=False`, the signals are ignored from the end of the block
until the process exits.

This module imports only the standard library, so the CLI can enter
`deferred()` before it imports anything heavy. Blocking the signals with
`pthread_sigmask` instead would be inherited by threads and by the
programs that agents run, which must stay killable with SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["deferred", "redeliver"]

_pending: list[int] = []


def _record(signum: int, frame: FrameType | None) -> None:
    _pending.append(signum)


@contextmanager
def deferred(
    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
    *,
    restore: bool = True,
) -> Iterator[None]:
    """Record `signals` instead of acting on them; restore the handlers on exit.

    With `restore=False` the signals are ignored (SIG_IGN) after the block.
    This is for a process that exits right after it, so that a signal in
    its last moments does not end it with 128 + the signal number.
    Programs started after the block inherit SIG_IGN, so start none.
    Outside the main thread, where Python cannot set signal handlers, this
    does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in signals}
    for signum in signals:
        signal.signal(signum, _record)
    try:
        yield
    finally:
        if restore:
            for signum, handler in previous.items():
                handler = handler if handler is not None else signal.SIG_DFL
                signal.signal(signum, handler)
        else:
            # Keeping `_record` is not enough. Interpreter shutdown sets every
            # signal with a Python handler back to SIG_DFL tens of
            # milliseconds before the process ends (CPython's _PySignal_Fini,
            # seen with strace on 3.11), but it leaves SIG_IGN as is.
            for signum in signals:
                signal.signal(signum, signal.SIG_IGN)
        _pending.clear()


def redeliver() -> None:
    """Raise again, in order, every signal recorded inside `deferred()`."""
    pending = list(_pending)
    _pending.clear()
    for signum in pending:
        signal.raise_signal(signum)
