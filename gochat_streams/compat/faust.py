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

from collections import Counter

from faust.tables import TableManager as FaustTableManager
from faust.tables.recovery import Recovery as FaustRecovery
from faust.types import TP
from faust.types.transports import ConsumerT


class Recovery(FaustRecovery):
    async def _seek_offsets(self, consumer: ConsumerT, tps: set[TP], offsets: Counter[TP], title: str) -> None:
        built = Counter({tp: -1 if offsets[tp] is None else offsets[tp] for tp in tps})
        await super()._seek_offsets(consumer, tps, built, title)


class TableManager(FaustTableManager):
    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
