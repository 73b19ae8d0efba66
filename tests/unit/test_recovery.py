"""Table recovery takes the queued changelog records in batches, and survives a rebalance that lands while it runs.

Faust's recovery builds the changelog offsets it will seek to, then awaits the broker
(and, for standbys, the whole active recovery) before seeking. A rebalance in between
adds partitions whose offset is not built yet (None); seeking to None crashed the
worker: "ValueError: Offset must be a positive integer" (seen on Kafka in test_crash,
when a killed worker rejoined).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import Any

import pytest
from faust import Event
from faust.stores.memory import Store as MemoryStore
from faust.types import TP, Message

from gochat_streams.app import app
from gochat_streams.tables.inbox import inbox
from gochat_streams.tables.presence import presence

PRESENCE_0 = TP(presence.changelog_topic.get_topic_name(), 0)


class SeekRecorder:
    """The consumer's side of a seek; refuses what aiokafka's ``seek`` refuses."""

    def __init__(self) -> None:
        self.seeks: dict[TP, int] = {}

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        for offset in partitions.values():
            if not isinstance(offset, int) or offset < 0:
                raise ValueError("Offset must be a positive integer")
        self.seeks.update(partitions)


async def test_a_partition_assigned_after_the_offsets_were_built_is_read_from_its_start() -> None:
    recovery = app.tables.recovery
    built, late = TP(presence.changelog_topic.get_topic_name(), 0), TP(presence.changelog_topic.get_topic_name(), 1)
    recovery.add_standby(presence, built)
    recovery.standby_offsets[built] = 41  # built before the awaits
    recovery.add_standby(presence, late)  # the rebalance, during them: no persisted offset
    consumer = SeekRecorder()
    try:
        await recovery._seek_offsets(consumer, recovery.standby_tps, recovery.standby_offsets, "standby")
    finally:
        for tp in (built, late):
            recovery.revoke(tp)
            recovery.standby_tps.discard(tp)
    assert consumer.seeks == {built: 41, late: 0}


def _record(tp: TP, offset: int, key: bytes) -> Event:
    """A changelog record as the table's changelog channel queues it: raw and decoded."""
    value = {"gw": {"c": offset}}
    message = Message(tp.topic, tp.partition, offset, 0.0, 0, None, key, json.dumps(value).encode(), None, tp=tp)
    return Event(app, key, value, None, message)


@pytest.fixture
async def recovering() -> AsyncIterator[Any]:
    """The app's recovery, with presence's partition 0 active and to be read up to a highwater the test sets.

    Presence's store is one in memory for the test, whatever the suite's: a whole run
    imports the app in an integration module first, with RocksDB, whose reads need a
    current event.
    """
    store, presence._data = presence._data, MemoryStore("memory://", app, presence)
    recovery = app.tables.recovery
    recovery.add_active(presence, PRESENCE_0)
    recovery._set_recovery_started()
    try:
        yield recovery
    finally:
        recovery._set_recovery_ended()
        recovery.revoke(PRESENCE_0)
        recovery.active_tps.clear()
        recovery.tp_to_table.clear()
        recovery.buffers.clear()
        presence._data = store
        # Bound to this test's event loop.
        recovery._signal_recovery_end = None
        app.tables._changelog_queue = None


async def _recover(recovery: Any, records: list[Event]) -> int:
    """Queue ``records``, run Faust's changelog loop until the actives are read; the tasks it created."""
    queue = app.tables.changelog_queue
    for record in records:
        queue.put_nowait(record)
    loop = asyncio.get_running_loop()
    created = 0

    def counting(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any) -> asyncio.Task[Any]:
        nonlocal created
        created += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    ended = asyncio.ensure_future(recovery.signal_recovery_end.wait())  # the loop clears it on its next turn
    slurp = asyncio.ensure_future(recovery._slurp_changelogs.fun(recovery))
    loop.set_task_factory(counting)
    try:
        await asyncio.wait_for(ended, timeout=10)
    finally:
        loop.set_task_factory(None)
        slurp.cancel()
        await asyncio.gather(slurp, return_exceptions=True)
    return created


async def test_queued_changelog_records_are_taken_without_a_task_each(recovering: Any) -> None:
    records = [_record(PRESENCE_0, offset, f"u{offset}".encode()) for offset in range(2_000)]
    recovering.active_highwaters[PRESENCE_0] = 1_999

    created = await _recover(recovering, records)

    assert created < 10  # Faust's loop: a task for each record (asyncio.wait_for)
    assert len(presence.data) == 2_000
    assert presence.data[b"u1999"] == {"gw": {"c": 1999}}
    assert recovering.active_offsets[PRESENCE_0] == 1_999
    assert not recovering.in_recovery


async def test_records_at_or_below_a_partitions_offset_are_skipped(recovering: Any) -> None:
    recovering.active_offsets[PRESENCE_0] = 4  # read before, say persisted in the store
    recovering.active_highwaters[PRESENCE_0] = 7

    await _recover(recovering, [_record(PRESENCE_0, offset, f"u{offset}".encode()) for offset in range(3, 8)])

    assert sorted(presence.data) == [b"u5", b"u6", b"u7"]


async def test_a_record_of_a_partition_neither_active_nor_standby_goes_to_no_table(recovering: Any) -> None:
    """Faust logs it, then applies it to the table of the record before it (here presence)."""
    stray = TP(inbox.changelog_topic.get_topic_name(), 0)
    recovering.active_highwaters[PRESENCE_0] = 1

    await _recover(recovering, [_record(PRESENCE_0, 0, b"u0"), _record(stray, 0, b"stray"), _record(PRESENCE_0, 1, b"u1")])

    assert sorted(presence.data) == [b"u0", b"u1"]
    assert stray not in recovering.active_offsets
