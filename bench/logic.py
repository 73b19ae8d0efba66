"""``logic``: the single-chat path without gateways.

The logic workers start (``--workers``, 1 by default); every user is first made online
on one of 4 gateway ids (presence changes on ``im-user-topic``, consumed before the
clock starts). Then the clock runs
from the first upstream message produced until the last one is on a downstream topic:
route_upstream, deliver (presence lookup, inbox entry, dedup mark) and the push, with
the persist tasks written on the side. Nothing may be lost: every message must arrive.

CPU a message, while the clock runs: the workers', the broker's, and the bench's own
(its producer and the consumer counting arrivals): what the machine's cores must give
each message, which bounds what more workers on the same cores can add.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiokafka import AIOKafkaProducer

from gochat_streams import topics
from gochat_streams.codecs import encode
from gochat_streams.kafka import producer_kwargs
from gochat_streams.models import PresenceChange, now_ms

from .common import Bench, count_records, text_message, wait_consumed

GATEWAYS = [f"gw{i}" for i in range(4)]


async def run_logic(bench: Bench, records: int, users: int, workers: int = 1) -> dict[str, Any]:
    s = bench.settings
    await topics.ensure_topics(s, [*topics.core(s), *(topics.downstream(s, gw) for gw in GATEWAYS)])
    # Each start waits until that worker is ready, so the group has settled on all of them.
    started_workers = [bench.start_worker(f"logic{n}") for n in range(1, workers + 1)]
    producer = AIOKafkaProducer(**{**producer_kwargs(s), "linger_ms": 5, "max_batch_size": 256 * 1024})
    await producer.start()
    try:
        online = [await producer.send(topics.user(s).name, encode(PresenceChange(
            user_id=f"u{i}", gateway_id=GATEWAYS[i % len(GATEWAYS)], connection_id=f"c{i}", online=True,
            timestamp=now_ms())), key=f"u{i}".encode()) for i in range(users)]
        await asyncio.gather(*online)
        await wait_consumed(s, topics.logic_group(s).group_id, topics.user(s).name)

        values = [(f"s{i % 1000}", json.dumps(text_message(i, f"s{i % 1000}", f"u{(i * 7) % users}")).encode())
                  for i in range(records)]
        with bench.measured(*started_workers, *bench.brokers()) as cpu:
            started, bench_cpu_s = time.perf_counter(), time.process_time()
            counting = asyncio.create_task(count_records(
                s, [topics.downstream_name(s, gw) for gw in GATEWAYS], records, started))
            sends = [await producer.send(topics.upstream(s).name, value, key=key.encode()) for key, value in values]
            await asyncio.gather(*sends)
            produced_s = time.perf_counter() - started
            delivered, seconds = await counting
            bench_cpu_s = time.process_time() - bench_cpu_s  # its producer and the counting consumer
    finally:
        await producer.stop()
    return {"scenario": "logic", "workers": workers, "records": records, "delivered": delivered, "seconds": round(seconds, 3),
            "msgs_per_s": round(records / seconds, 1), "produce_s": round(produced_s, 3),
            "worker_cpu_s": round(sum(cpu[w.name] for w in started_workers), 2),
            "cpu_us_per_msg": round(sum(cpu[w.name] for w in started_workers) / records * 1e6),
            "broker_cpu_us_per_msg": round(sum(v for k, v in cpu.items() if k.startswith("kafka")) / records * 1e6),
            "bench_cpu_us_per_msg": round(bench_cpu_s / records * 1e6)}
