"""The bounded reads of a user's view (gochat_streams/views.py), on a dict standing in for the inbox table."""

from collections import UserDict
from typing import Any

from gochat_streams.tables.dedup import CHUNK, mark_key, remember
from gochat_streams.tables.inbox import entry_key
from gochat_streams.views import RECENT_MARKS, VIEW_MAX_READS, mark_count, newest_marks, pending_seqs

TTL = 10**9


class CountedTable(UserDict[str, Any]):
    """Counts the reads a view makes: lookups and membership tests."""

    reads = 0

    def __getitem__(self, key: str) -> Any:
        self.reads += 1
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.reads += 1
        return super().__contains__(key)


def test_pending_entries_are_read_up_to_the_bound_from_the_oldest() -> None:
    table = CountedTable({entry_key("bob", seq): {"message_id": f"m{seq}"} for seq in range(1, 10_001)})
    del table.data[entry_key("bob", 2)]  # acknowledged
    assert pending_seqs(table, "bob", {"next": 10_001, "floor": 1, "log": None}, VIEW_MAX_READS) == (
        [1, *range(3, VIEW_MAX_READS + 1)], False)
    assert table.reads == VIEW_MAX_READS
    # Within the bound: all of them.
    assert pending_seqs(table, "bob", {"next": 11, "floor": 1, "log": None}, VIEW_MAX_READS) == (
        [1, *range(3, 11)], True)


def test_marks_are_counted_without_reads_and_only_the_newest_are_read() -> None:
    table = CountedTable()
    log = None
    keys = [mark_key("bob", "alice", f"m{i}") for i in range(5_000)]
    for seq, key in enumerate(keys):
        log = remember(table.data, "bob", log, key, seq, seq, TTL)
    table.reads = 0
    assert mark_count(log) == 5_000 and table.reads == 0
    assert newest_marks(table, "bob", log, RECENT_MARKS) == keys[-RECENT_MARKS:]
    assert table.reads <= 2 + RECENT_MARKS + 2 * CHUNK  # two chunks, their keys and the recent ones
    # Fewer than asked for: all of them; none without a log.
    small = None
    for seq, key in enumerate(keys[:3]):
        small = remember(table.data, "amy", small, key.replace("bob", "amy"), seq, seq, TTL)
    assert (mark_count(small), newest_marks(table, "amy", small, RECENT_MARKS)) == (
        3, [key.replace("bob", "amy") for key in keys[:3]])
    assert (mark_count(None), newest_marks(table, "amy", None, RECENT_MARKS)) == (0, [])
