"""Group concurrent state store calls into batches ("group commit").

A `Batcher` queues the items that callers submit and runs them through one
batch operation: one round trip and one transaction for all the calls that
arrived while the previous batch was in flight. At most one batch of a
batcher is in flight at a time, so its items wait for the one before them.

Each caller gets its own future, which the batch completes with the item's
own result or exception. A batch operation that raises fails all of its
items with that exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

#: A batch operation: takes the items, returns for each item in order its
#: result or the exception that its caller should raise.
RunBatch = Callable[[list[ItemT]], Awaitable[list[ResultT | BaseException]]]


class Batcher(Generic[ItemT, ResultT]):
    """Queue of items that run in batches of at most `max_batch`, one at a time.

    `keep` receives the task that runs the batches, so that the owner can
    wait for it before it closes its connections.
    """

    def __init__(
        self,
        run_batch: RunBatch[ItemT, ResultT],
        *,
        max_batch: int,
        keep: set[asyncio.Future[Any]],
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._keep = keep
        self._pending: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._flusher: asyncio.Future[None] | None = None
        self.batches = 0
        self.items = 0

    def submit(self, item: ItemT) -> asyncio.Future[ResultT]:
        """Queue `item`; the future gets its result when its batch ends.

        The batch starts at the next turn of the event loop at the earliest,
        so the calls that become ready together share it.
        """
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
            self._keep.add(self._flusher)
            self._flusher.add_done_callback(self._keep.discard)

        return future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._run(batch)
        finally:
            self._flusher = None
            # Items are left only when this task was cancelled (the event
            # loop is closing): nothing would run them.
            for _, future in self._pending:
                future.cancel()
            self._pending.clear()

    async def _run(self, batch: list[tuple[ItemT, asyncio.Future[ResultT]]]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            results = await self._run_batch([item for item, _ in batch])
        except Exception as error:  # noqa: BLE001 - each caller raises it
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        except BaseException:
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
