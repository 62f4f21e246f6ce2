"""The limit on runs in progress across all agents of one engine.

Written by hand because `anyio.CapacityLimiter` yields to the event loop
on every acquire, even when a token is free: one extra loop iteration per
run, a visible part of a run of /bin/true. Here a free slot is taken at
once, and a full limiter queues its waiters first in, first out.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType


class RunSlots:
    """At most `total` holders at once; `total` may change at any time.

    Use as an async context manager around one run. A waiter that is
    cancelled takes no slot, or gives back the one it was just handed.
    """

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError("total must be at least 1")
        self._total = total
        self.used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def total(self) -> int:
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        if value < 1:
            raise ValueError("total must be at least 1")
        self._total = value
        while self.used < self._total and self._hand_over():
            self.used += 1

    async def acquire(self) -> None:
        if self.used < self._total and not self._waiters:
            self.used += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as it was cancelled
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give the slot to the first waiter, or free it."""
        if self.used <= self._total and self._hand_over():
            return
        self.used -= 1

    def _hand_over(self) -> bool:
        """Wake the first waiter with a slot; return False when none waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True

        return False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
