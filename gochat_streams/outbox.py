"""What an agent decided to send, apart from sending it, so that sends can be retried alone."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import faust


@dataclass(frozen=True)
class Outgoing:
    topic: faust.TopicT
    key: str
    value: bytes
    headers: Mapping[str, bytes] | None = None


async def send_all(records: Iterable[Outgoing]) -> None:
    for record in records:
        await record.topic.send(key=record.key, value=record.value,
                                headers=dict(record.headers) if record.headers else None)
