"""Faust's table manager with a recovery that survives a rebalance landing while it runs.

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
from collections import Counter
from typing import Any

import faust
from aiokafka.producer.message_accumulator import MessageBatch
from faust.stores.base import SerializedStore
from faust.tables import TableManager as FaustTableManager
from faust.tables.recovery import Recovery as FaustRecovery
from faust.types import TP
from faust.types.transports import ConsumerT


class Recovery(FaustRecovery):
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
