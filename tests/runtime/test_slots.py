"""RunSlots: the limit on runs in progress, its queue and its changes."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

from fleetd.runtime.slots import RunSlots


async def test_free_slot_taken_without_yield() -> None:
    slots = RunSlots(2)
    order: list[str] = []

    async def other() -> None:
        order.append("other")

    async with anyio.create_task_group() as group:
        group.start_soon(other)
        await slots.acquire()
        order.append("acquired")

    assert order == ["acquired", "other"]
    assert slots.used == 1


async def test_waiters_served_in_order() -> None:
    slots = RunSlots(1)
    served: list[int] = []

    async def run(index: int) -> None:
        async with slots:
            served.append(index)
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as group:
        for index in range(5):
            group.start_soon(run, index)
            await anyio.lowlevel.checkpoint()

    assert served == [0, 1, 2, 3, 4]
    assert slots.used == 0


async def test_never_more_than_total() -> None:
    slots = RunSlots(3)
    active = 0
    peak = 0

    async def run() -> None:
        nonlocal active, peak
        async with slots:
            active += 1
            peak = max(peak, active)
            await anyio.sleep(0.001)
            active -= 1

    async with anyio.create_task_group() as group:
        for _ in range(30):
            group.start_soon(run)

    assert peak == 3
    assert slots.used == 0


async def test_cancelled_waiter_takes_no_slot() -> None:
    slots = RunSlots(1)
    await slots.acquire()
    with anyio.move_on_after(0.01):
        await slots.acquire()

    slots.release()

    assert slots.used == 0
    await slots.acquire()
    assert slots.used == 1


async def test_waiter_cancelled_after_hand_over_gives_slot_back() -> None:
    slots = RunSlots(1)
    await slots.acquire()
    waiter = asyncio.ensure_future(slots.acquire())
    third = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)

    slots.release()  # hands the slot to `waiter`
    waiter.cancel()  # cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await third

    assert slots.used == 1


async def test_raised_total_wakes_waiters() -> None:
    slots = RunSlots(1)
    await slots.acquire()
    waiters = [asyncio.ensure_future(slots.acquire()) for _ in range(2)]
    await asyncio.sleep(0)

    slots.total = 3
    await asyncio.gather(*waiters)

    assert slots.used == 3


async def test_lowered_total_frees_without_hand_over() -> None:
    slots = RunSlots(2)
    await slots.acquire()
    await slots.acquire()
    waiter = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)

    slots.total = 1
    slots.release()  # 2 in use over a total of 1: only frees
    await asyncio.sleep(0)
    assert not waiter.done()
    slots.release()  # now at the total: the waiter gets it
    await waiter

    assert slots.used == 1


def test_total_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RunSlots(0)
