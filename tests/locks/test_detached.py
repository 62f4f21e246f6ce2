"""State store writes that go on after their caller was cancelled."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from structlog.contextvars import bind_contextvars

from fleetd.locks.base import LeaseLost
from fleetd.locks.common import await_detached, keep_detached
from fleetd.locks.sqlite_writer import StoreClosed

EVENT = "store_write_failed_after_cancel"


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Capture what the running loop would report, such as unretrieved errors."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)


async def settle() -> None:
    """Run pending callbacks, then collect every unreferenced future."""
    for _ in range(3):
        await asyncio.sleep(0)
    gc.collect()
    gc.collect()


async def cancel_caller(write: asyncio.Future[Any], keep: set[Any], **ids: str) -> None:
    """Await `write` through await_detached in a task with `ids` bound, then cancel it."""
    orphans: list[Any] = []

    async def caller() -> None:
        bind_contextvars(**ids)
        await await_detached(write, keep, orphans.append)

    task = asyncio.create_task(caller())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert orphans == []


@pytest.mark.parametrize(
    "error",
    [
        StoreClosed("state store /srv/state.db closed while busy: disk is full"),
        LeaseLost("lease of r1/provision lost"),
    ],
)
async def test_failed_write_after_cancel_logged(
    events: list[dict[str, Any]],
    loop_errors: list[dict[str, Any]],
    error: Exception,
) -> None:
    keep: set[Any] = set()
    write = asyncio.get_running_loop().create_future()
    await cancel_caller(write, keep, run_id="run-1", record="r1", mnemonic="provision")

    write.set_exception(error)
    del write
    await settle()

    assert loop_errors == []
    failures = [event for event in events if event["event"] == EVENT]
    assert len(failures) == 1
    assert failures[0]["log_level"] == "warning"
    assert failures[0]["error"] == str(error)
    assert failures[0]["error_type"] == type(error).__name__
    assert failures[0]["run_id"] == "run-1"
    assert failures[0]["record"] == "r1"
    assert failures[0]["mnemonic"] == "provision"
    assert keep == set()


async def test_failed_task_after_cancel_logged(
    events: list[dict[str, Any]], loop_errors: list[dict[str, Any]]
) -> None:
    started = asyncio.Event()
    fail = asyncio.Event()

    async def write() -> None:
        started.set()
        await fail.wait()
        raise StoreClosed("state store /srv/state.db is closed")

    keep: set[Any] = set()
    task = asyncio.ensure_future(write())
    await cancel_caller(task, keep, run_id="run-2")
    assert started.is_set()

    fail.set()
    del task
    await settle()

    assert loop_errors == []
    failures = [event for event in events if event["event"] == EVENT]
    assert len(failures) == 1
    assert failures[0]["run_id"] == "run-2"
    assert keep == set()


async def test_write_after_cancel_goes_to_orphan() -> None:
    keep: set[Any] = set()
    orphans: list[str] = []
    write = asyncio.get_running_loop().create_future()

    async def caller() -> None:
        await await_detached(write, keep, orphans.append)

    task = asyncio.create_task(caller())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    write.set_result("grant")
    await settle()

    assert orphans == ["grant"]
    assert keep == set()


async def test_failed_write_reaches_caller(
    events: list[dict[str, Any]], loop_errors: list[dict[str, Any]]
) -> None:
    keep: set[Any] = set()
    write = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(write.set_exception, LeaseLost("lost"))

    with pytest.raises(LeaseLost):
        await await_detached(write, keep)
    del write
    await settle()

    assert loop_errors == []
    assert [event for event in events if event["event"] == EVENT] == []


async def test_keep_detached_logs_failure(
    events: list[dict[str, Any]], loop_errors: list[dict[str, Any]]
) -> None:
    keep: set[Any] = set()
    write = asyncio.get_running_loop().create_future()
    bind_contextvars(record="r3")
    try:
        keep_detached(write, keep)
    finally:
        structlog.contextvars.unbind_contextvars("record")
    assert keep == {write}

    write.set_exception(StoreClosed("state store /srv/state.db is closed"))
    del write
    await settle()

    assert loop_errors == []
    failures = [event for event in events if event["event"] == EVENT]
    assert len(failures) == 1
    assert failures[0]["record"] == "r3"
    assert keep == set()
