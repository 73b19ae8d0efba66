"""Acknowledgements from this gateway's sockets to ``im-user-topic``, many to a record.

Every message a client gets, it acknowledges, and every ack was a record and an event
of the logic worker's own: with a group of 1,000 it was 1,000 events, as many as the
group's message had before it was fanned out per partition. The acks of the users of
one partition that arrive while this gateway's last record to that partition is in
flight go out together, in one :class:`Ack` record keyed by the first of them: at low
load an ack goes alone and at once, under load each record carries what queued up
meanwhile. A user's acks stay in order (one partition, one record in flight at a time),
and an ack's caller learns whether its record was written, as with a send of its own.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from ..codecs import encode
from ..models import MAX_ACKS, Ack, Acked
from ..routing import partition_of


class AckForwarder:
    def __init__(self, producer: AIOKafkaProducer, topic: str, partitions: int) -> None:
        self.producer = producer
        self.topic = topic
        self.partitions = partitions
        #: partition -> the acks waiting for its next record, with their callers' futures.
        self._waiting: dict[int, list[tuple[Acked, asyncio.Future[None]]]] = {}
        #: partition -> the task writing its records, while there is one.
        self._writers: dict[int, asyncio.Task[None]] = {}
        #: partition -> the newest ack queued for it (records are written in order).
        self._newest: dict[int, asyncio.Future[None]] = {}

    def forward(self, acked: Acked) -> asyncio.Future[None]:
        """Queue the ack; done once its record is written, with the producer's error if it could not be.

        Not awaited by the socket's reader: its next frames (the client's sends) do not wait
        for the ack's round trip.
        """
        partition = partition_of(acked.user_id, self.partitions)
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(partition, []).append((acked, written))
        self._newest[partition] = written
        if partition not in self._writers:
            self._writers[partition] = asyncio.create_task(self._write(partition), name=f"acks to {partition}")
        return written

    async def written(self, user_id: str) -> None:
        """Once the acks queued so far for the user's partition are written (or failed).

        The gateway's other records of a user wait for it: a socket that acked and
        reconnects must not be synced, ahead of its acks, what it acknowledged.
        """
        newest = self._newest.get(partition_of(user_id, self.partitions))
        if newest is not None and not newest.done():
            await asyncio.wait([newest])

    async def _write(self, partition: int) -> None:
        batch: list[tuple[Acked, asyncio.Future[None]]] = []
        try:
            while waiting := self._waiting.pop(partition, None):
                batch, rest = waiting[:MAX_ACKS], waiting[MAX_ACKS:]
                if rest:
                    self._waiting[partition] = rest
                record = Ack(entries=[acked for acked, _ in batch])
                try:
                    await self.producer.send_and_wait(self.topic, key=batch[0][0].user_id.encode(),
                                                      value=encode(record))
                except Exception as exc:  # each caller answers its client
                    _settle(batch, exc)
                else:
                    _settle(batch, None)
        finally:
            del self._writers[partition]
            for _, written in batch:  # cancelled while writing
                if not written.done():
                    written.cancel()

    async def close(self) -> None:
        """Stop writing: the acks not yet written fail (their messages come again on the next connect)."""
        for writer in list(self._writers.values()):
            writer.cancel()
        for waiting in self._waiting.values():
            for _, written in waiting:
                written.cancel()
        self._waiting.clear()


def _settle(batch: list[tuple[Acked, asyncio.Future[None]]], error: Exception | None) -> None:
    for _, written in batch:
        if written.done():  # its caller was cancelled
            continue
        if error is None:
            written.set_result(None)
        else:
            written.set_exception(error)
