"""The message store: chat history and who may read it, in SQLite or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from .base import MessageStore
from .postgres import PostgresStore
from .sqlite import SqliteStore

__all__ = ["MessageStore", "PostgresStore", "SqliteStore", "open_store"]


async def open_store(url: str) -> MessageStore:
    """Open ``sqlite:///path`` (``sqlite:////abs/path``) or ``postgresql://...``, creating the schema if
    missing and migrating a store of an earlier schema."""
    if url.startswith("sqlite:///"):
        return await SqliteStore.open(Path(url.removeprefix("sqlite:///")))
    if url.startswith(("postgresql://", "postgres://")):
        return await PostgresStore.open(url)
    raise ValueError(f"unsupported message store URL {url!r}: expected sqlite:///... or postgresql://...")
