"""The child watcher that tells the asyncio event loop a program exited.

On Python 3.11 asyncio's default child watcher (`ThreadedChildWatcher`)
starts one thread per program to wait for it. Starting that thread was
about a third of the cost of spawning /bin/true in scripts/bench/engine.py
on a 2-core machine. `PidfdChildWatcher` waits on a pidfd in the event
loop instead, with no thread. Python 3.12 made a pidfd watcher the default, and
uvloop has its own, so this is done only on 3.11's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator


def pidfd_supported() -> bool:
    """Tell whether this system can open a pidfd (Linux 5.3 and later)."""
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False

    return True


@contextlib.contextmanager
def pidfd_child_watcher() -> Iterator[None]:
    """Use a pidfd child watcher on the running loop while inside the block.

    The previous watcher is restored on exit, so a later event loop (tests
    run one per test) finds the one it expects. Does nothing on Python 3.12
    and later, on event loops other than asyncio's own, without pidfd
    support, or when a pidfd watcher is already attached to this loop.
    """
    loop = asyncio.get_running_loop()
    if (
        sys.version_info >= (3, 12)
        or not isinstance(loop, asyncio.SelectorEventLoop)
        or not pidfd_supported()
    ):
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        previous = asyncio.get_child_watcher()
        if isinstance(previous, asyncio.PidfdChildWatcher) and previous.is_active():
            yield
            return
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(loop)
        asyncio.set_child_watcher(watcher)
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(previous)
