"""When each agent runs: its interval, the random splay and the next due time.

A cycle is due at its base time plus a random offset of at most `splay`.
The next base time is the previous one plus the interval, so the cadence
does not drift by the length of the cycles. A cycle that runs longer than
the interval has overrun it: the next cycle then starts right after it
(again after a splay) and the missed cycles are not made up.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from fleetd.runtime import LoadedAgent

__all__ = ["AgentSlot", "agent_interval", "is_runnable"]


def agent_interval(loaded: LoadedAgent, default: float) -> float:
    """Return the seconds between cycles: the agent's SCHEDULE, else `default`."""
    schedule = loaded.agent.schedule
    if schedule is not None and schedule.every is not None:
        return schedule.every

    return default


def is_runnable(loaded: LoadedAgent) -> bool:
    """Return whether the daemon runs the agent: scheduled and not `SCHEDULE manual`."""
    schedule = loaded.agent.schedule
    if schedule is not None and schedule.manual:
        return False

    return loaded.scheduled


@dataclass(eq=False)
class AgentSlot:
    """The daemon's entry for one agent name: its version and its schedule.

    One coroutine per slot runs the cycles, so cycles of one agent never
    overlap. A reload replaces `loaded` (the next cycle uses the new
    version) and calls `wake` so the coroutine re-reads the due time.
    """

    name: str
    loaded: LoadedAgent
    interval: float
    splay: float
    base: float  # anyio.current_time() of the next cycle, before the splay
    offset: float = 0.0  # random part of the delay, in [0, splay]
    active: bool = True  # False: stop after the cycle in progress
    in_cycle: bool = False
    cycles: int = 0
    overruns: int = 0
    cycle_start: float | None = None  # base time of the cycle in progress or last one
    rng: random.Random = field(default_factory=random.Random)
    _woken: anyio.Event = field(default_factory=anyio.Event)

    def __post_init__(self) -> None:
        self.offset = self._draw_offset()

    @property
    def due(self) -> float:
        """The anyio.current_time() at which the next cycle starts."""
        return self.base + self.offset

    def _draw_offset(self) -> float:
        return self.rng.uniform(0.0, self.splay) if self.splay > 0 else 0.0

    def wake(self) -> None:
        """Make the coroutine re-read `due`, `active` and the daemon's state."""
        self._woken.set()

    async def wait_until_due(self, stopping: anyio.Event) -> None:
        """Sleep until the next cycle is due, the slot is deactivated, or `stopping` is set."""
        while self.active and not stopping.is_set():
            remaining = self.due - anyio.current_time()
            if remaining <= 0:
                return
            with anyio.move_on_after(remaining):
                await self._woken.wait()
            self._woken = anyio.Event()

    def start_cycle(self) -> None:
        """Record that the cycle due at `base` starts now."""
        self.cycle_start = self.base
        self.in_cycle = True

    def finish_cycle(self, started: float, now: float) -> int:
        """Set the next due time after a cycle run from `started` to `now`.

        Returns the number of cycles missed: positive when the cycle took
        longer than the interval (an overrun), else 0.
        """
        self.in_cycle = False
        self.cycles += 1
        base = self.cycle_start if self.cycle_start is not None else started
        self.offset = self._draw_offset()
        duration = now - started
        if duration <= self.interval:
            # At most one splay behind the cadence, so the next cycle may
            # be due at once.
            self.base = base + self.interval
            return 0
        self.overruns += 1
        self.base = now

        return math.floor(duration / self.interval)

    def reschedule(self, interval: float, splay: float) -> None:
        """Apply a new interval or splay to the next cycle."""
        if interval == self.interval and splay == self.splay:
            return
        self.interval = interval
        self.splay = splay
        if self.cycle_start is not None and not self.in_cycle:
            self.base = self.cycle_start + interval
        self.offset = self._draw_offset()
