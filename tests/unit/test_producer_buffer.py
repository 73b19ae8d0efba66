"""The producer's flush, which Faust awaits before it commits offsets, waits for every table write.

A table write is buffered (Faust's ProducerBuffer) and handed to the producer by a
background task. Faust's flush returned after 0.1 s in which no write was handed over,
writes or not: with the producer waiting for room, offsets were committed ahead of the
changelog writes of the events they cover, and a kill -9 then lost those writes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.types.tuples import FutureMessage, PendingMessage

from gochat_streams.app import app
from gochat_streams.compat.aiokafka import ProducerBuffer


class SlowChannel:
    """A topic whose producer takes ``delay_s`` to accept each record, as a full accumulator does."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.published: list[Any] = []

    async def publish_message(self, fut: FutureMessage, wait: bool = False) -> None:
        await asyncio.sleep(self.delay_s)
        self.published.append(fut.message.value)


def _write(channel: SlowChannel, value: int) -> FutureMessage:
    return FutureMessage(PendingMessage(channel, None, value, None, None, None, None, None, None))  # type: ignore[arg-type]


async def _started_buffer() -> ProducerBuffer:
    buffer = ProducerBuffer()
    buffer.app = app
    await buffer.start()
    return buffer


async def test_a_flush_returns_once_every_buffered_write_is_with_the_producer() -> None:
    channel = SlowChannel(delay_s=0.3)
    buffer = await _started_buffer()
    try:
        for n in range(3):
            buffer.put(_write(channel, n))
        await buffer.flush()
        assert channel.published == [0, 1, 2]
    finally:
        await buffer.stop()


async def test_writes_buffered_when_it_stops_are_handed_over_in_order() -> None:
    channel = SlowChannel(delay_s=0.05)
    buffer = await _started_buffer()
    for n in range(5):
        buffer.put(_write(channel, n))
    await buffer.stop()
    assert channel.published == [0, 1, 2, 3, 4]
