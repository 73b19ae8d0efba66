"""compat/aiokafka.py hand_over: a fetched record goes to its streams inline unless it must wait.

Faust's fetch loop awaits ``wait_first(record, suspended)`` for every record; hand_over
must keep what that wait does (the record handed over, its errors raised, a wait cut
short by a suspension of the flow), minus its tasks when the record need not wait.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mode import Service

from gochat_streams.compat.aiokafka import _waits_for, hand_over


class Record:
    """A conductor's hand-over: waits for ``room`` if given, then puts ``name`` on ``queue``."""

    def __init__(self) -> None:
        self.queue: list[str] = []
        self.cancelled = False

    async def hand_over(self, name: str, room: asyncio.Event | None = None) -> None:
        try:
            if room is not None:
                await room.wait()
            self.queue.append(name)
        except asyncio.CancelledError:
            self.cancelled = True
            raise


class Waits:
    """mode's wait_first, counting its calls."""

    def __init__(self) -> None:
        self.service = Service()
        self.calls = 0

    async def wait_first(self, *coros: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return await self.service.wait_first(*coros, **kwargs)


async def test_a_record_that_need_not_wait_is_handed_over_inline_and_the_loop_yielded_to() -> None:
    record, waits, suspend = Record(), Waits(), asyncio.Event()
    others: list[str] = []

    async def agent() -> None:  # scheduled before the hand-over: runs at its yield
        others.append(f"saw {record.queue}")

    asyncio.get_running_loop().create_task(agent())
    await hand_over(record.hand_over("r1"), suspend.wait(), waits.wait_first)
    assert record.queue == ["r1"] and waits.calls == 0
    assert others == ["saw ['r1']"]  # the loop ran other tasks once the record was handed over


async def test_a_changelog_record_is_handed_over_without_the_yield() -> None:
    # The recovery takes changelog records a batch at a time (compat/faust.py): yielding
    # to the loop after each of them cost recovery a tenth of its time (bench memory).
    record, waits, suspend = Record(), Waits(), asyncio.Event()
    others: list[str] = []

    async def recovery() -> None:
        others.append("ran")

    asyncio.get_running_loop().create_task(recovery())
    await hand_over(record.hand_over("c1"), suspend.wait(), waits.wait_first, to_agents=False)
    assert record.queue == ["c1"] and others == []
    await asyncio.sleep(0)
    assert others == ["ran"]


async def test_a_record_that_must_wait_is_handed_over_when_it_can() -> None:
    record, waits, suspend, room = Record(), Waits(), asyncio.Event(), asyncio.Event()
    handing = asyncio.ensure_future(hand_over(record.hand_over("r1", room), suspend.wait(), waits.wait_first))
    await asyncio.sleep(0.01)
    assert not handing.done() and record.queue == []
    room.set()
    await asyncio.wait_for(handing, 1)
    assert record.queue == ["r1"] and waits.calls == 1 and not record.cancelled


async def test_a_suspension_of_the_flow_cuts_a_waiting_record_short() -> None:
    record, waits, suspend, room = Record(), Waits(), asyncio.Event(), asyncio.Event()
    handing = asyncio.ensure_future(hand_over(record.hand_over("r1", room), suspend.wait(), waits.wait_first))
    await asyncio.sleep(0.01)
    suspend.set()  # a rebalance: Faust's fetch loop goes on; the record is read again after the seek
    await asyncio.wait_for(handing, 1)
    await asyncio.sleep(0)
    assert record.queue == [] and record.cancelled


async def test_a_record_whose_hand_over_fails_raises_as_the_wait_did() -> None:
    async def failing() -> None:
        raise ValueError("undecodable")

    with pytest.raises(ValueError, match="undecodable"):
        await hand_over(failing(), asyncio.Event().wait(), Waits().wait_first)


async def test_only_the_fetch_loops_wait_is_recognised() -> None:
    suspend, other = asyncio.Event(), asyncio.Event()
    mine, theirs, sleep = suspend.wait(), other.wait(), asyncio.sleep(0)
    try:
        assert _waits_for(mine, suspend) and not _waits_for(theirs, suspend) and not _waits_for(sleep, suspend)
    finally:
        for coro in (mine, theirs, sleep):
            coro.close()
