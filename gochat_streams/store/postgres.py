"""PostgreSQL backend: an asyncpg pool; metadata as JSONB."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from .base import Dialect, Fetch, MessageStore, prepare

#: Serialises schema creation: concurrent CREATE TABLE IF NOT EXISTS can still collide in
#: PostgreSQL's catalog when a worker and a gateway start together.
_SCHEMA_LOCK_KEY = 0x6763_6873  # "gchs"
_DIALECT = Dialect(
    json_type="JSONB",
    seq_column="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    table_exists="SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1",
    codepoint_collation='"C"',
)


class PostgresStore(MessageStore):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str) -> PostgresStore:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        try:
            async with pool.acquire() as con, con.transaction():
                await con.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK_KEY)
                await prepare(con.fetch, _DIALECT)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Fetch]:
        async with self._pool.acquire() as con, con.transaction():
            yield con.fetch

    async def _fetch(self, sql: str, *args: Any) -> Sequence[Any]:
        return await self._pool.fetch(sql, *args)

    async def close(self) -> None:
        await self._pool.close()
