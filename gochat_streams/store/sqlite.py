"""SQLite backend: one file shared by the task worker (writes) and the gateways (reads)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from .base import Dialect, Fetch, MessageStore, prepare

#: How long a writer waits for another process's lock before failing.
BUSY_TIMEOUT_MS = 10_000
_DIALECT = Dialect(
    json_type="TEXT",
    # AUTOINCREMENT: a deleted row's seq is never handed out again.
    seq_column="INTEGER PRIMARY KEY AUTOINCREMENT",
    table_exists="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1",
    codepoint_collation='BINARY',
)


def _sqlite_sql(sql: str) -> str:
    # ``$1`` is a *named* parameter to SQLite; ``?1`` is the numbered one.
    return re.sub(r"\$(\d+)", r"?\1", sql)


class SqliteStore(MessageStore):
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        # One connection: its statements must not interleave with another coroutine's transaction.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; ours are explicit BEGIN IMMEDIATE.
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # WAL: gateways keep reading history while the task worker writes.
            await db.execute("PRAGMA journal_mode = WAL")
            # A row rewritten or deleted leaves no old bytes in free pages: `keys reencrypt`
            # seals history stored in clear, which must then be gone from the file.
            await db.execute("PRAGMA secure_delete = ON")
            store = cls(db)
            async with store._transaction() as fetch:
                await prepare(fetch, _DIALECT)
        except BaseException:
            await db.close()
            raise
        return store

    async def _run(self, sql: str, *args: Any) -> Sequence[Any]:
        return await self._db.execute_fetchall(_sqlite_sql(sql), args)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Fetch]:
        async with self._lock:
            # IMMEDIATE takes the write lock up front, so busy_timeout applies here rather
            # than failing a deferred transaction's later upgrade with SQLITE_BUSY.
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._run
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    async def _fetch(self, sql: str, *args: Any) -> Sequence[Any]:
        async with self._lock:
            return await self._run(sql, *args)

    async def _purge_replaced(self) -> None:
        # The rows' earlier pages may still be in the WAL: copy its last pages into the file
        # and empty it (best effort: a reader's open snapshot leaves the rest for later).
        async with self._lock:
            await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def close(self) -> None:
        await self._db.close()
