"""Table recovery survives a rebalance that lands while it runs.

Faust's recovery builds the changelog offsets it will seek to, then awaits the broker
(and, for standbys, the whole active recovery) before seeking. A rebalance in between
adds partitions whose offset is not built yet (None); seeking to None crashed the
worker: "ValueError: Offset must be a positive integer" (seen on Kafka in test_crash,
when a killed worker rejoined).
"""

from __future__ import annotations

from collections.abc import Mapping

from faust.types import TP

from gochat_streams.app import app
from gochat_streams.tables.presence import presence


class SeekRecorder:
    """The consumer's side of a seek; refuses what aiokafka's ``seek`` refuses."""

    def __init__(self) -> None:
        self.seeks: dict[TP, int] = {}

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        for offset in partitions.values():
            if not isinstance(offset, int) or offset < 0:
                raise ValueError("Offset must be a positive integer")
        self.seeks.update(partitions)


async def test_a_partition_assigned_after_the_offsets_were_built_is_read_from_its_start() -> None:
    recovery = app.tables.recovery
    built, late = TP(presence.changelog_topic.get_topic_name(), 0), TP(presence.changelog_topic.get_topic_name(), 1)
    recovery.add_standby(presence, built)
    recovery.standby_offsets[built] = 41  # built before the awaits
    recovery.add_standby(presence, late)  # the rebalance, during them: no persisted offset
    consumer = SeekRecorder()
    try:
        await recovery._seek_offsets(consumer, recovery.standby_tps, recovery.standby_offsets, "standby")
    finally:
        for tp in (built, late):
            recovery.revoke(tp)
            recovery.standby_tps.discard(tp)
    assert consumer.seeks == {built: 41, late: 0}
