"""What the scenarios share: a broker of their own, payloads, waiting for workers, results."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from gochat_streams.devstack import DEV_ENV, Stack, free_port
from gochat_streams.kafka import client_kwargs
from gochat_streams.monitor import OffsetReader, lags
from gochat_streams.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
#: How long a scenario waits for something that should happen.
WAIT_S = 600.0


@dataclass
class Bench:
    """One run's broker, namespace and processes."""

    stack: Stack
    env: dict[str, str]
    root: Path

    @property
    def settings(self) -> Settings:
        return Settings(**{k[len("GOCHAT_"):].lower(): v for k, v in self.env.items()})

    def start_worker(self, name: str, app: str = "gochat_streams.app:app") -> int:
        """A Faust worker; returns its web port once it is ready (its tables recovered)."""
        port = free_port()
        data = self.root / name
        data.mkdir(parents=True, exist_ok=True)
        self.stack.start_worker(name, {**self.env, "GOCHAT_DATA_DIR": str(data)}, port, app=app)
        deadline = time.monotonic() + WAIT_S
        while not _ready(f"http://127.0.0.1:{port}/ready/"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready: see {self.stack.log_dir / name}.log")
            time.sleep(0.2)
        return port


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:  # 503 (HTTPError) while it starts, or not listening yet
        return False


def new_bench(root: Path, broker: str | None) -> Bench:
    stack = Stack(root / "logs")
    env = {
        **DEV_ENV,
        "GOCHAT_BROKER_URL": broker or stack.start_broker(free_port()),
        "GOCHAT_NAMESPACE": f"bench{uuid.uuid4().hex[:8]}.",
        "GOCHAT_TABLE_STORE": "rocksdb://",
    }
    return Bench(stack, env, root)


def text_message(i: int, sender: str, recipient: str, size: int = 200) -> dict[str, Any]:
    """A single-chat message whose JSON is about ``size`` bytes."""
    message = {"message_id": f"m{i:09d}", "from_user_id": sender, "to_user_id": recipient,
               "conversation_id": f"c_{sender}_{recipient}", "content": "", "message_type": "text",
               "metadata": {}, "timestamp": int(time.time() * 1000), "gateway_id": "gw0"}
    message["content"] = "x" * max(1, size - len(json.dumps(message)))
    return message


async def count_records(s: Settings, topics: list[str], expected: int, started: float) -> tuple[int, float]:
    """Read ``topics`` from their start until ``expected`` records arrived; (count, seconds since started)."""
    consumer = AIOKafkaConsumer(**client_kwargs(s), group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        count, last = 0, started
        async with asyncio.timeout(WAIT_S):
            while count < expected:
                for batch in (await consumer.getmany(timeout_ms=200, max_records=10_000)).values():
                    count += len(batch)
                    last = time.perf_counter()
        return count, last - started
    finally:
        await consumer.stop()


async def wait_consumed(s: Settings, group_id: str, topic: str) -> None:
    """Until the group has committed everything written to ``topic``."""
    reader = OffsetReader(s)
    await reader.start()
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                offsets, groups = await reader.read()
                pending = sum(lag for (g, t, _), lag in lags(offsets, groups).items() if g == group_id and t == topic)
                if pending == 0:
                    return
                await asyncio.sleep(0.5)
    finally:
        await reader.stop()


def machine() -> dict[str, Any]:
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0)
    return {"cpus": os.cpu_count(), "memory_gb": round(mem_kb / 1024 / 1024, 1), "python": platform.python_version()}


def report(scenario: str, rows: list[dict[str, Any]], extra: dict[str, Any]) -> Path:
    """Print ``rows`` as a table and write everything to bench/results/."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    widths = {c: max(len(c), *(len(_fmt(row.get(c))) for row in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{scenario}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps({"scenario": scenario, "machine": machine(), "rows": rows, **extra}, indent=2))
    print(f"\n{path}")
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)
