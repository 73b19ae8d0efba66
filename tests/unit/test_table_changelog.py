"""Table writes reach the changelog as Faust's path would write them: in order, on the event's partition.

compat/faust.py's Table queues each write's changelog record on the table manager;
the agent (deadletters.py: handle) and every producer flush produce the queue.
tables/inbox.py's crash reasoning needs one event's writes to reach the changelog as
a prefix of what was written: the records must keep their order, and a failed send
must leave the rest first in line.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from faust.streams import _current_event

from gochat_streams.app import app
from gochat_streams.compat.faust import Table, TableManager, flush_changelog
from gochat_streams.tables.inbox import inbox


class FakeProducer:
    """Faust's producer as the flush uses it: ``append`` puts the record in its partition's
    batch (one batch here, whose future the test resolves) and returns its offset there."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, int | None]] = []
        self.batch = SimpleNamespace(future=asyncio.get_running_loop().create_future())
        self.fail_at = fail_at

    async def append(self, topic: str, key: bytes, value: bytes | None,
                     partition: int | None = None) -> tuple[SimpleNamespace, int]:
        if self.fail_at is not None and len(self.sent) == self.fail_at:
            self.fail_at = None
            raise RuntimeError("producer refused")
        self.sent.append((topic, key, value, partition))
        return self.batch, len(self.sent) - 1


class _Event:
    """What the table reads of the current event (Faust keeps a weak reference to it)."""

    message = SimpleNamespace(topic="im-user-topic", partition=3)
    app = app


@pytest.fixture
def on_partition_3() -> Iterator[None]:
    """Inside a fake event of im-user-topic partition 3, as an agent's handler runs."""
    event = _Event()
    inbox._verified_source_topics_for_partitions.add("im-user-topic")
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    yield
    _current_event.reset(token)
    app.tables._unsent.clear()  # type: ignore[attr-defined]


@pytest.fixture
async def producer(monkeypatch: pytest.MonkeyPatch) -> FakeProducer:
    fake = FakeProducer()
    monkeypatch.setattr(app, "_producer", fake)
    return fake


def test_the_logic_app_uses_the_queueing_table() -> None:
    assert isinstance(inbox, Table) and isinstance(app.tables, TableManager)


async def test_writes_reach_the_changelog_in_order_on_the_events_partition(on_partition_3: None,
                                                                           producer: FakeProducer) -> None:
    inbox["alice/1"] = {"message_id": "m1"}
    inbox["alice/bob/m1"] = {"at": 5, "seq": 1}
    del inbox["alice/1"]
    inbox["alice"] = {"next": 2, "floor": 2, "log": None}
    assert producer.sent == []  # queued until the agent flushes
    assert inbox.get("alice") == {"next": 2, "floor": 2, "log": None}
    assert inbox.get("alice/1") is None and inbox.get("alice/1", "gone") == "gone"

    await flush_changelog(app)

    changelog = inbox.changelog_topic.get_topic_name()
    assert producer.sent == [
        (changelog, b"alice/1", b'{"message_id":"m1"}', 3),
        (changelog, b"alice/bob/m1", b'{"at":5,"seq":1}', 3),
        (changelog, b"alice/1", None, 3),  # a tombstone, as Faust writes a deletion
        (changelog, b"alice", b'{"next":2,"floor":2,"log":null}', 3),
    ]


async def test_a_refused_send_leaves_the_rest_first_in_line(on_partition_3: None, producer: FakeProducer) -> None:
    producer.fail_at = 1
    for seq in range(1, 4):
        inbox[f"carol/{seq}"] = {"seq": seq}
    with pytest.raises(RuntimeError):
        await flush_changelog(app)
    inbox["carol"] = {"next": 4}
    await flush_changelog(app)
    assert [key for _, key, _, _ in producer.sent] == [b"carol/1", b"carol/2", b"carol/3", b"carol"]


async def test_the_persisted_offset_is_kept_once_per_partition_a_flush_sent(
        on_partition_3: None, producer: FakeProducer, monkeypatch: pytest.MonkeyPatch) -> None:
    persisted: list[tuple[Any, int]] = []
    monkeypatch.setattr(inbox.data, "set_persisted_offset", lambda tp, offset: persisted.append((tp, offset)),
                        raising=False)
    inbox["dave/1"] = {"seq": 1}
    inbox["dave"] = {"next": 2}
    await flush_changelog(app)
    producer.batch.future.set_result(SimpleNamespace(topic_partition=("inbox-changelog", 3), offset=10))
    await asyncio.sleep(0)  # done callbacks run on the loop
    assert persisted == [(("inbox-changelog", 3), 11)]  # the batch's first offset, plus the last record's place
