"""Agent schedules: interval, splay and overruns."""

from __future__ import annotations

import random

from fleetd.daemon.schedule import AgentSlot, agent_interval, is_runnable
from fleetd.lang.ast import Agent, Schedule
from fleetd.runtime import LoadedAgent


def loaded_agent(
    schedule: Schedule | None = None, *, scheduled: bool = True
) -> LoadedAgent:
    agent = Agent(
        path="/a.agent", name="A", mnemonic="a", commands=(), schedule=schedule
    )
    return LoadedAgent(agent, {}, scheduled=scheduled)


def make_slot(
    interval: float = 10.0, splay: float = 0.0, base: float = 100.0
) -> AgentSlot:
    return AgentSlot(
        name="A",
        loaded=loaded_agent(),
        interval=interval,
        splay=splay,
        base=base,
        rng=random.Random(1),
    )


def test_interval_from_schedule_or_default() -> None:
    assert agent_interval(loaded_agent(Schedule(every=30.0)), 300.0) == 30.0
    assert agent_interval(loaded_agent(None), 300.0) == 300.0
    assert agent_interval(loaded_agent(Schedule(manual=True)), 300.0) == 300.0


def test_manual_and_unscheduled_not_runnable() -> None:
    assert is_runnable(loaded_agent())
    assert not is_runnable(loaded_agent(Schedule(manual=True)))
    assert not is_runnable(loaded_agent(scheduled=False))


def test_splay_offset_within_bounds() -> None:
    offsets = set()
    for seed in range(50):
        slot = AgentSlot(
            name="A",
            loaded=loaded_agent(),
            interval=10,
            splay=3,
            base=0,
            rng=random.Random(seed),
        )
        assert 0.0 <= slot.offset <= 3.0
        assert slot.due == slot.offset
        offsets.add(round(slot.offset, 3))
    assert len(offsets) > 10


def test_cadence_kept_without_drift() -> None:
    slot = make_slot(interval=10.0, base=100.0)
    slot.start_cycle()
    assert slot.finish_cycle(started=100.0, now=104.0) == 0
    assert slot.due == 110.0
    slot.start_cycle()
    assert slot.finish_cycle(started=110.0, now=119.9) == 0
    assert slot.due == 120.0
    assert slot.overruns == 0


def test_overrun_counts_missed_cycles() -> None:
    slot = make_slot(interval=10.0, base=100.0)
    slot.start_cycle()
    assert slot.finish_cycle(started=100.0, now=125.0) == 2
    assert slot.due == 125.0  # next cycle right away, missed ones not made up
    assert slot.overruns == 1


def test_late_start_from_splay_not_overrun() -> None:
    slot = make_slot(interval=1.0, splay=1.0, base=100.0)
    slot.start_cycle()
    # Started 0.9 s late because of the splay, ran 0.2 s: no overrun.
    assert slot.finish_cycle(started=100.9, now=101.1) == 0
    assert slot.base == 101.0


def test_reschedule_moves_next_cycle() -> None:
    slot = make_slot(interval=10.0, base=100.0)
    slot.start_cycle()
    slot.finish_cycle(started=100.0, now=101.0)
    slot.reschedule(interval=5.0, splay=0.0)
    assert slot.interval == 5.0
    assert slot.due == 105.0
