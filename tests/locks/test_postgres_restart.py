"""A real PostgreSQL restart in the middle of a race of four processes.

Runs a private server (tests/pgserver.py) so that restarting it disturbs
nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from fleetd.locks import Resolution, open_store
from tests.pgserver import PrivateServer

Spawn = Callable[[str, str, str], Any]


@pytest.mark.slow
async def test_restart_during_race(private_server: PrivateServer, spawn: Spawn) -> None:
    # Enough records that the race outlasts both restarts on a fast machine.
    count = 6000
    store = open_store(private_server.url)
    await store.open()
    try:
        started = [spawn(private_server.url, "race", str(count)) for _ in range(4)]
        for child in started:
            assert child.wait_line() == "ready"
        for child in started:
            child.release()
        for _ in range(2):
            await asyncio.sleep(0.3)
            await asyncio.to_thread(private_server.restart)
        results = await asyncio.gather(
            *(asyncio.to_thread(child.finish, 200) for child in started)
        )
        committed = [int(out) for out, _ in results]
        assert sum(committed) == count, committed
        assert any("state_store_retry" in err for _, err in results)
        marks = await store.marks()
        assert len({mark.key for mark in marks}) == count
        assert {mark.resolution for mark in marks} == {Resolution.COMMIT}
        assert await store.counts() == {"a": {"committed": count}}
        assert await store.locks() == []
    finally:
        await store.close()
