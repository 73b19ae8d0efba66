"""The bounded reads of a user's view (gochat_streams/views.py), on a dict standing in for the inbox table."""

from collections import UserDict
from typing import Any

from gochat_streams.tables.dedup import mark_key, remember
from gochat_streams.tables.inbox import entry_key
from gochat_streams.views import VIEW_MAX_READS, newest_marks, pending_seqs

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


def test_marks_are_read_from_the_newest_up_to_the_bound() -> None:
    table = CountedTable()
    log = None
    keys = [mark_key("bob", "alice", f"m{i}") for i in range(5_000)]
    for seq, key in enumerate(keys):
        log = remember(table.data, "bob", log, key, seq, seq, TTL)
    table.reads = 0
    found, complete = newest_marks(table, "bob", log, VIEW_MAX_READS)
    assert table.reads <= VIEW_MAX_READS and not complete
    assert len(found) > VIEW_MAX_READS // 2 and found == keys[-len(found):]
    # Within the bound: all of them.
    small = None
    for seq, key in enumerate(keys[:40]):
        small = remember(table.data, "amy", small, key.replace("bob", "amy"), seq, seq, TTL)
    assert newest_marks(table, "amy", small, VIEW_MAX_READS) == ([k.replace("bob", "amy") for k in keys[:40]], True)
    assert newest_marks(table, "amy", None, VIEW_MAX_READS) == ([], True)
