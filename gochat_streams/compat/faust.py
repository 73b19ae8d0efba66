"""Faust's table manager with a recovery that survives a rebalance landing while it runs,
and takes the queued changelog records a batch at a time (:class:`Recovery`).

faust-streaming 0.15's recovery builds the changelog offsets it will seek to, then
awaits the broker (and, for standby partitions, the whole active recovery) before it
seeks. A rebalance in between (a killed worker rejoining) adds partitions whose offset
is not built yet: ``None``, which the seek refuses with "Offset must be a positive
integer", and the worker crashes. Such a partition is read from its start, as Faust
does for an offset of -1; the rebalance has restarted recovery anyway, which builds
its offset properly on the next round.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter, deque
from itertools import repeat
from time import monotonic
from typing import Any

import faust
from aiokafka.producer.message_accumulator import MessageBatch
from faust.stores.base import SerializedStore
from faust.tables import TableManager as FaustTableManager
from faust.tables.recovery import Recovery as FaustRecovery
from faust.tables.recovery import logger
from faust.types import TP, EventT
from faust.types.transports import ConsumerT
from faust.utils.tracing import finish_span
from mode import Service


class Recovery(FaustRecovery):
    """Faust's, taking every changelog record queued at each turn; its seek as the module docstring says.

    Faust's ``_slurp_changelogs`` awaits each record with a task of its own
    (``asyncio.wait_for``) and after each one sums what every changelog partition has
    left to read: a recovery costs the worker's loop a few wake-ups and that sum a
    record. Here one wait takes every record queued, and the end of recovery and of
    the standbys' catch-up is checked once a batch. The records are handled as Faust
    does: each partition's offset (older records skipped), each table's buffer,
    applied with ``apply_changelog_batch`` when it holds ``recovery_buffer_size``
    (``standby_buffer_size``), and what is left once the actives reach their highwater.
    """

    #: While recovering, how long to let records queue behind the first before taking them:
    #: the worker's consumer queues them one at a time, and a turn costs the loop a wake-up.
    linger_s: float = 0.01

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What Faust's loop trims by hand: the last records' handling times, for the estimate it logs.
        self._processing_times = deque(maxlen=self.num_samples_required_for_estimate)

    @Service.task
    async def _slurp_changelogs(self) -> None:
        queue = self.tables.changelog_queue
        while not self.should_stop:
            try:
                self.signal_recovery_end.clear()
                linger = self.in_recovery and queue.empty()
                try:
                    async with asyncio.timeout(5.0):
                        events = [await queue.get()]
                except TimeoutError:
                    # Faust also skips aborted transactions here: the apps keep Faust's
                    # at-least-once processing, so no changelog record is written in one.
                    if self.should_stop:
                        return
                    self._maybe_end_recovery()
                    continue
                if linger:
                    await asyncio.sleep(self.linger_s)
                try:
                    while queue.qsize():
                        events.append(queue.get_nowait())
                except Exception as exc:  # thrown into the queue (a record that did not decode): logged, as Faust does
                    logger.warning(f"Error in recovery {exc}")
                await self._apply_events(events)
                self._maybe_end_recovery()
                self._maybe_standbys_ready()
            except Exception as exc:
                logger.warning(f"Error in recovery {exc}")

    async def _apply_events(self, events: list[EventT]) -> None:
        now = monotonic()
        active = 0
        for event in events:
            tp, offset = event.message.tp, event.message.offset
            if tp in self.active_tps:
                offsets, received_at = self.active_offsets, self._active_events_received_at
            elif tp in self.standby_tps:
                offsets, received_at = self.standby_offsets, self._standby_events_received_at
            else:
                # Faust logs it too, then applies it to the table of the record before it.
                logger.warning(f"recovery unknown topic {tp} offset {offset}")
                continue
            received_at[tp] = now
            seen = offsets.get(tp)
            if seen is not None and offset <= seen:
                continue
            offsets[tp] = offset
            table = self.tp_to_table[tp]
            buffer = self.buffers[table]
            buffer.append(event)
            await table.on_changelog_event(event)
            if offsets is self.active_offsets:
                active += 1
                full = len(buffer) >= table.recovery_buffer_size
            else:
                full = len(buffer) >= table.standby_buffer_size
            if full:
                table.apply_changelog_batch(buffer)
                buffer.clear()
                self._last_flush_at = now
        if active:
            done = monotonic()
            if (last := self._last_active_event_processed_at) is not None:
                each = (done - last) / active
                self._processing_times.extend(repeat(each, min(active, self.num_samples_required_for_estimate)))
            self._last_active_event_processed_at = done

    def _maybe_end_recovery(self) -> None:
        if self.in_recovery and not self.need_recovery():
            self.flush_buffers()
            self._set_recovery_ended()
            if self._actives_span is not None:
                self._actives_span.set_tag("Actives-Ready", True)
            self.signal_recovery_end.set()

    def _maybe_standbys_ready(self) -> None:
        ready = self._standbys_span is None and self.tables.standbys_ready
        if not ready and not self.standby_remaining_total():
            if self._standbys_span is not None:
                finish_span(self._standbys_span)
                self._standbys_span = None
            self.tables.on_standbys_ready()

    async def _seek_offsets(self, consumer: ConsumerT, tps: set[TP], offsets: Counter[TP], title: str) -> None:
        built = Counter({tp: -1 if offsets[tp] is None else offsets[tp] for tp in tps})
        await super()._seek_offsets(consumer, tps, built, title)


class TableManager(FaustTableManager):
    """Faust's, with the recovery above, and the changelog records of :class:`Table` writes not yet produced."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unsent: list[tuple[Table, int, bytes, bytes | None]] = []
        self._flushing = asyncio.Lock()

    def queue_changelog(self, table: Table, partition: int, key: bytes, value: bytes | None) -> None:
        self._unsent.append((table, partition, key, value))

    async def flush_changelog(self) -> None:
        """Hand the queued changelog records to the producer, in the order they were written.

        One flush at a time, so that a producer waiting for room cannot let a later
        flush's records overtake this one's on a partition.
        """
        if not self._unsent and not self._flushing.locked():
            return
        async with self._flushing:
            producer = self.app.producer
            while self._unsent:
                records, self._unsent = self._unsent, []
                last: dict[tuple[Table, int], tuple[MessageBatch, int]] = {}
                for n, (table, partition, key, value) in enumerate(records):
                    try:
                        last[table, partition] = await producer.append(
                            table.changelog_topic.get_topic_name(), key, value, partition)
                    except BaseException:
                        self._unsent[:0] = records[n:]  # still first in line, for the next flush
                        raise
                for (table, _), (batch, offset) in last.items():
                    batch.future.add_done_callback(functools.partial(table.persisted, offset))

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class Table(faust.Table):
    """Faust's table with one store read a lookup and a cheaper changelog write.

    Faust's ``table.get(key)`` reads the store twice (``key in store``, then
    ``store[key]``), and each write becomes a FutureMessage through the topic's buffer,
    with the value JSON-encoded twice (changelog and store) and the changelog offset
    written to RocksDB once per record. Here a write encodes key and value once, puts
    them in the store and queues the changelog record on the :class:`TableManager`,
    which produces the queue in order (:meth:`TableManager.flush_changelog`): by the
    agent after each event, and before every flush of the producer, which Faust does
    before each commit. The records, their partition (the event's) and their order are
    what Faust would have produced, through the same producer: one event's writes to a
    table still reach its changelog as a prefix (tables/inbox.py relies on it). The apps
    process at least once, Faust's default: no transaction to tie these records to.
    """

    #: None until the first write checks that the store encodes as the changelog does.
    _same_bytes: bool | None = None
    #: None until the first write of a str key checks that the store and the changelog
    #: both encode it as its UTF-8 (Faust's raw serializer: the tables' key_type=bytes).
    _utf8_keys: bool | None = None

    def get(self, key: Any, default: Any = None) -> Any:
        self._sensor_on_get(self, key)
        store = self.data
        if not isinstance(store, SerializedStore):
            return store.get(key, default)
        raw = store._get(key.encode() if self._utf8_keys and isinstance(key, str) else store._encode_key(key))
        return default if raw is None else store._decode_value(raw)

    def _key_bytes(self, key: Any) -> bytes:
        """``key`` as the changelog encodes it; a str key's UTF-8 once checked (Faust's serializer
        layers were 4% of the worker in ``bench group``)."""
        if self._utf8_keys and isinstance(key, str):
            return key.encode()
        key_bytes: bytes = self.changelog_topic.prepare_key(key, self.key_serializer, None, None)[0]
        if self._utf8_keys is None and isinstance(key, str):
            store = self.data
            self._utf8_keys = isinstance(store, SerializedStore) and key_bytes == key.encode() == store._encode_key(key)
        return key_bytes

    def __setitem__(self, key: Any, value: Any) -> None:
        partition = self.partition_for_key(key)
        topic = self.changelog_topic
        key_bytes = self._key_bytes(key)
        value_bytes, _ = topic.prepare_value(value, self.value_serializer, None, None)
        store = self.data
        if self._same_bytes is None:
            self._same_bytes = isinstance(store, SerializedStore) and (
                store._encode_key(key) == key_bytes and store._encode_value(value) == value_bytes)
        if self._same_bytes:
            store._set(key_bytes, value_bytes)
        else:
            store[key] = value
        self.app.tables.queue_changelog(self, partition, key_bytes, value_bytes)
        self._sensor_on_set(self, key, value)

    def __delitem__(self, key: Any) -> None:
        partition = self.partition_for_key(key)
        key_bytes = self._key_bytes(key)
        del self.data[key]
        self.app.tables.queue_changelog(self, partition, key_bytes, None)  # a tombstone, as Faust writes
        self._sensor_on_del(self, key)

    def persisted(self, offset_in_batch: int, sent: asyncio.Future) -> None:
        """What Faust's ``_on_changelog_sent`` does, once for the last record of a partition a flush
        sent: at ``offset_in_batch`` of the batch ``sent`` (its future: the batch's first offset)."""
        if sent.cancelled() or sent.exception() is not None or (metadata := sent.result()) is None:
            return  # the producer stops the worker's commits (compat/aiokafka.py)
        self.data.set_persisted_offset(metadata.topic_partition, metadata.offset + offset_in_batch)


async def flush_changelog(app: faust.App) -> None:
    """Produce the changelog records of the app's table writes not yet produced (:class:`Table`)."""
    if isinstance(tables := app.tables, TableManager):
        await tables.flush_changelog()
