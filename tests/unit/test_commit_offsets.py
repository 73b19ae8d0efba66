"""A worker commits a partition's offset only past records its agents have handled.

Faust's bookkeeping let a commit pass records nobody handled, which a worker killed
later, or the partition's next owner, then never handled: a message never delivered,
an acknowledgement never applied (seen in test_crash, when a worker died while the
group rebalanced). Two holes, each shown here on Faust's own consumer:

- a record that a stream drops unhandled (it came while the flow was stopped for a
  rebalance, or from an older generation) was acknowledged like a handled one;
- the first record after the committed offset could be missing from the handled
  ones: Faust only refused a commit when more than one was.

And after a rebalance, Faust resumed the stream partitions before it sought them to
their committed offsets, so that records fetched in between were handled, fetched
again, and dropped or handled twice out of order.
"""

from __future__ import annotations

from faust.types import TP
from faust.types.tuples import ConsumerMessage

from gochat_streams.app import app
from gochat_streams.topics import user

TOPIC = user(app.gochat_settings).name
PARTITION = TP(TOPIC, 0)


def _record(offset: int) -> ConsumerMessage:
    return ConsumerMessage(TOPIC, 0, offset, 0.0, 0, None, b"alice", b"{}", None)


def _handled(offset: int) -> ConsumerMessage:
    """A record as a stream marks it when it hands it to its agent."""
    message = _record(offset)
    message.tracked = True
    return message


def _consumer_at(committed: int) -> object:
    app.topics._acking_topics.add(TOPIC)  # type: ignore[attr-defined]  # as subscribing the deliver agent does
    consumer = app.consumer
    for table in (consumer._acked, consumer._acked_index, consumer._gap):  # type: ignore[attr-defined]
        table.pop(PARTITION, None)
    consumer._committed_offset[PARTITION] = committed  # type: ignore[attr-defined]
    return consumer


def test_handled_records_are_committed_up_to_the_last_of_them() -> None:
    consumer = _consumer_at(10)
    for offset in (10, 11, 12):
        consumer.ack(_handled(offset))  # type: ignore[attr-defined]
    assert consumer._new_offset(PARTITION) == 13  # type: ignore[attr-defined]


def test_no_commit_passes_the_first_record_after_the_committed_offset_unhandled() -> None:
    consumer = _consumer_at(10)
    for offset in (11, 12):
        consumer.ack(_handled(offset))  # type: ignore[attr-defined]
    assert consumer._new_offset(PARTITION) is None  # type: ignore[attr-defined]


def test_a_record_dropped_unhandled_is_not_committed() -> None:
    consumer = _consumer_at(10)
    consumer.ack(_record(10))  # type: ignore[attr-defined]  # skipped by the stream: never tracked
    consumer.ack(_handled(11))  # type: ignore[attr-defined]
    assert consumer._new_offset(PARTITION) is None  # type: ignore[attr-defined]


async def test_stream_partitions_stay_paused_until_their_seek_is_done() -> None:
    consumer = app.consumer
    consumer._active_partitions = set()  # type: ignore[attr-defined]
    fetching_while_seeking: set[TP] = set()

    async def seek_to_committed() -> dict[TP, int]:
        fetching_while_seeking.update(consumer._get_active_partitions())  # type: ignore[attr-defined]
        return {PARTITION: 10}

    consumer.seek_to_committed = seek_to_committed  # type: ignore[method-assign]  # the broker's side
    try:
        consumer.resume_partitions({PARTITION})  # as Faust's recovery does, just before it seeks
        await consumer.perform_seek()
    finally:
        del consumer.seek_to_committed
    assert PARTITION not in fetching_while_seeking
    assert PARTITION in consumer._get_active_partitions()  # type: ignore[attr-defined]
    assert consumer._read_offset[PARTITION] == 10  # type: ignore[attr-defined]


async def test_a_partition_whose_next_records_are_gone_commits_past_them() -> None:
    """Sought to 10, its first record is 15 (retention deleted 10-14): 10 is not waited for."""
    consumer = _consumer_at(10)
    consumer._sought[PARTITION] = 10  # type: ignore[attr-defined]
    await consumer._add_gap(PARTITION, 11, 15)  # type: ignore[attr-defined]  # as Faust's fetch loop does
    consumer.ack(_handled(15))  # type: ignore[attr-defined]
    assert consumer._new_offset(PARTITION) == 16  # type: ignore[attr-defined]
