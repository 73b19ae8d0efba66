"""The audit log (spec 审计日志: 操作审计, 访问审计): who did what, to what, when, from where, with what outcome.

One event per login accepted or refused, 401/403 answer, history read, group or
conversation administration, operator endpoint read and dead-letter replay, from
:meth:`AuditLog.record`, the one call every part of the system makes. Each event goes
to two places: a JSON line on the ``gochat.audit`` logger, at once, and
``im-audit-topic`` (topics.py: a year's retention), keyed by the process that wrote it.

Tamper-evident: every process writes its own hash chain. An event carries its
producer's id, a sequence number from 0, the hash of the producer's previous event
(``prev``; :data:`GENESIS` for the first) and its own ``hash``: SHA-256 over the
canonical JSON of everything else (:func:`event_hash`). One key per producer puts a
chain on one partition, in order. :func:`verify_chains` (``python -m gochat_streams
audit verify``) re-hashes every event and reports the first broken link of each chain:
an edited event, a deleted one, events out of order. Deleting a chain's last events,
or a whole chain, leaves no broken link: the JSON log is the second copy to compare.

Writing an event never blocks or fails its request: ``record`` only builds, chains,
logs and queues it; a background task sends the queue in order through the process's
own producer, retrying with backoff while the broker is away
(``gochat_audit_write_failures_total``). At most ``GOCHAT_AUDIT_BUFFER_MAX`` events
wait; beyond that an event is logged but not chained (``gochat_audit_events_unchained_total``),
and the next chained one, ``audit.unchained``, says how many were left out, so the
chain stays whole and the gap is on record.

Events name users, groups, paths and reasons; never a token, a password or a
message's content (details under such names are blanked: :data:`_SECRET_NAMES`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .metrics import audit_events, audit_events_unchained, audit_write_failures
from .models import now_ms

log = logging.getLogger("gochat.audit")
# Audit lines are kept whatever GOCHAT_LOG_LEVEL (or a command's log level) says.
log.setLevel(logging.INFO)
_internal = logging.getLogger(__name__)

Outcome = Literal["success", "denied", "failure"]
#: ``prev`` of a chain's first event.
GENESIS = "0" * 64
#: Events sent in one go; the producer batches them into one request per partition.
_BATCH = 500
_MIN_BACKOFF_S, _MAX_BACKOFF_S = 0.2, 30.0
#: A detail's text is cut to this many characters: reasons and ids, not documents.
_MAX_TEXT = 300
#: Detail names that may carry a secret or a message's text: their values are never written.
_SECRET_NAMES = re.compile(r"token|password|passwd|secret|credential|content|plaintext", re.IGNORECASE)

#: ``send(key, value)`` hands one record to a producer and returns its delivery future.
Send = Callable[[bytes, bytes], Awaitable[Awaitable[object]]]


class AuditEvent(BaseModel):
    """An event as the topic holds it (the fields :func:`verify_chains` checks)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1]
    producer: str = Field(min_length=1)
    seq: int = Field(ge=0)
    prev: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: Unix milliseconds.
    at: int
    service: str
    actor: str
    action: str
    target: str
    outcome: Outcome
    #: The remote address of the request, ``gateway:<id>`` for what a gateway forwarded, ``cli:<user>@<host>``.
    source: str
    details: dict[str, Any]
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")


def canonical(event: dict[str, Any]) -> bytes:
    """The bytes an event's hash covers: its JSON with sorted keys and no spaces, ``hash`` left out."""
    body = {k: v for k, v in event.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(event: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(event)).hexdigest()


def _clean(value: Any) -> Any:
    """A detail as JSON can carry it, text cut short."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v) for v in itertools.islice(value, 100)]
    return str(value)[:_MAX_TEXT]


def new_producer_id(service: str) -> str:
    """This process's chain: the service, host and pid to find it by, and a random part so that a restart starts anew."""
    return f"{service}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


class AuditLog:
    """One process's audit chain: :meth:`record` events; :meth:`start` sending them; :meth:`close` at the end."""

    def __init__(self, service: str, *, buffer_max: int = 10_000, producer_id: str | None = None) -> None:
        self.service = service
        self.producer_id = producer_id or new_producer_id(service)
        self.buffer_max = buffer_max
        self._seq = 0
        self._prev = GENESIS
        #: Chained events not yet on the topic, oldest first: (key, value).
        self._pending: deque[tuple[bytes, bytes]] = deque()
        self._unchained = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(self, actor: str | None, action: str, target: str, outcome: Outcome, source: str | None,
               **details: Any) -> dict[str, Any] | None:
        """Log and queue one event; the event, or None if the queue was full (then it is only logged).

        Never raises and never waits: it runs on request paths.
        """
        try:
            event = {"v": 1, "at": now_ms(), "service": self.service, "actor": _clean(actor or "anonymous"),
                     "action": action, "target": _clean(target), "outcome": outcome,
                     "source": _clean(source or "unknown"),
                     "details": {k: "[redacted]" if _SECRET_NAMES.search(k) else _clean(v)
                                 for k, v in details.items()}}
            audit_events.labels(self.service, outcome).inc()
            if len(self._pending) >= self.buffer_max:
                self._unchained += 1
                audit_events_unchained.labels(self.service).inc()
                log.info(json.dumps({**event, "producer": self.producer_id, "unchained": True},
                                    ensure_ascii=False, separators=(",", ":")))
                return None
            if self._unchained:
                count, self._unchained = self._unchained, 0
                self._chain({**event, "actor": "system", "action": "audit.unchained", "target": self.producer_id,
                             "outcome": "failure", "source": "local", "details": {"count": count}})
            return self._chain(event)
        except Exception:  # an audit failure must not fail the request it describes
            _internal.exception("audit event %s not recorded", action)
            return None

    def _chain(self, event: dict[str, Any]) -> dict[str, Any]:
        event = {**event, "producer": self.producer_id, "seq": self._seq, "prev": self._prev}
        event["hash"] = self._prev = event_hash(event)
        self._seq += 1
        line = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        log.info(line)
        self._pending.append((self.producer_id.encode(), line.encode()))
        self._wakeup.set()
        return event

    def start(self, send: Send) -> None:
        """Send what is queued and whatever comes, in order, with ``send`` (the process's producer)."""
        self._task = asyncio.create_task(self._send_all(send), name="audit-log")

    async def close(self, timeout_s: float = 5.0) -> None:
        """Give the queue ``timeout_s`` to reach the topic, then stop; what is left is only in the log."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._pending and not self._task.done():
                    await asyncio.sleep(0.05)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._pending:
            _internal.error("%d audit events of %s were not written to the topic; they are in the audit log lines",
                            len(self._pending), self.producer_id)

    async def _send_all(self, send: Send) -> None:
        failures = 0
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = list(itertools.islice(self._pending, _BATCH))
            try:
                futures = [await send(key, value) for key, value in batch]
                results = await asyncio.gather(*futures, return_exceptions=True)
            except Exception as exc:  # the producer refused the records outright
                results = [exc]
            written = next((i for i, r in enumerate(results) if isinstance(r, BaseException)), len(results))
            for _ in range(written):
                self._pending.popleft()
            if written == len(batch):
                failures = 0
                continue
            # In order: the rest waits for the first event that failed.
            failures += 1
            audit_write_failures.labels(self.service).inc()
            wait_s = min(_MIN_BACKOFF_S * 2 ** (failures - 1), _MAX_BACKOFF_S)
            _internal.warning("writing audit events failed %d times (%r); %d wait, next attempt in %.1f s",
                              failures, results[written], len(self._pending), wait_s)
            await asyncio.sleep(wait_s)


@contextlib.asynccontextmanager
async def audit_session(settings: Any, service: str) -> AsyncIterator[AuditLog]:
    """An audit log with a producer of its own, for a command: the events are written when it ends."""
    from aiokafka import AIOKafkaProducer

    from . import topics
    from .kafka import producer_kwargs

    from .logs import TEXT_FORMAT

    await topics.ensure_topics(settings, [topics.audit(settings)])
    producer = AIOKafkaProducer(**producer_kwargs(settings))
    await producer.start()
    audit = AuditLog(service, buffer_max=settings.audit_buffer_max)
    audit.start(producer_send(producer, topics.audit(settings).name))
    # A command's log handler takes warnings only (the CLI's level): its audit lines get one of their own.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    log.addHandler(handler)
    log.propagate = False
    try:
        yield audit
    finally:
        await audit.close(timeout_s=30.0)
        await producer.stop()
        log.removeHandler(handler)
        log.propagate = True


def producer_send(producer: Any, topic: str) -> Send:
    """:data:`Send` through a plain aiokafka producer."""

    async def send(key: bytes, value: bytes) -> Awaitable[object]:
        return await producer.send(topic, value, key=key)

    return send


def cli_identity() -> tuple[str, str]:
    """Who ran a command and from where, as the audit log names them: the OS user, ``cli:<host>``.

    The broker says nothing about who an operator is; the OS account is the best name there is.
    """
    import getpass

    return getpass.getuser(), f"cli:{socket.gethostname()}"


# ---- verifying --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """A record of the audit topic, as read."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"


@dataclass(frozen=True)
class ChainReport:
    producer: str
    #: Events read up to the first broken link (all of them when there is none).
    events: int
    last_seq: int
    #: The first broken link, said in words with its position; None when the chain is whole.
    broken: str | None = None
    #: Exact copies of an event written twice (a retried send): not a break.
    duplicates: int = 0


@dataclass(frozen=True)
class Verification:
    chains: list[ChainReport]
    #: Records that are not audit events at all.
    unreadable: list[str]

    @property
    def ok(self) -> bool:
        return not self.unreadable and all(c.broken is None for c in self.chains)


async def read_records(settings: Any, topic: str) -> list[Record]:
    """Every record of ``topic`` up to its end when called, each partition's in offset order."""
    from .kafka import read_to_end

    return [Record(r.partition, r.offset, r.key, r.value) for r in await read_to_end(settings, topic)]


def verify_chains(records: Iterable[Record]) -> Verification:
    """Check every producer's chain in ``records`` (each partition's in offset order)."""
    chains: dict[str, list[tuple[Record, dict[str, Any]]]] = {}
    unreadable: list[str] = []
    for record in records:
        try:
            raw = json.loads(record.value or b"")
            AuditEvent.model_validate(raw)
        except (ValueError, ValidationError) as exc:
            unreadable.append(f"{record.position}: not an audit event ({str(exc).splitlines()[0][:200]})")
            continue
        chains.setdefault(raw["producer"], []).append((record, raw))
    return Verification([_verify_chain(producer, events) for producer, events in chains.items()], unreadable)


def _verify_chain(producer: str, events: list[tuple[Record, dict[str, Any]]]) -> ChainReport:
    seqs = {event["seq"] for _, event in events}
    hashes: dict[int, str] = {}
    expected, prev, duplicates = 0, GENESIS, 0

    def broken(why: str) -> ChainReport:
        return ChainReport(producer, len(hashes), expected - 1, why, duplicates)

    for record, event in events:
        at, seq = record.position, event["seq"]
        if record.key != producer.encode():
            return broken(f"at {at}: seq {seq} is filed under another key than its producer's (moved or forged)")
        if event_hash(event) != event["hash"]:
            return broken(f"at {at}: seq {seq} was edited: its hash does not match its content")
        if seq < expected:
            if hashes.get(seq) == event["hash"]:
                duplicates += 1  # the same event written again
                continue
            return broken(f"at {at}: seq {seq} comes after seq {expected - 1} (reordered or replaced)")
        if seq > expected:
            if expected in seqs:
                return broken(f"at {at}: seq {seq} comes before seq {expected} (reordered)")
            missing = str(expected) if seq == expected + 1 else f"{expected}-{seq - 1}"
            return broken(f"at {at}: seq {missing} missing before seq {seq} (deleted)")
        if event["prev"] != prev:
            return broken(f"at {at}: seq {seq} does not link to seq {seq - 1}: its prev is not that event's hash "
                          "(one of them was replaced)" if seq else f"at {at}: seq 0 does not start a chain")
        hashes[seq] = prev = event["hash"]
        expected = seq + 1
    return ChainReport(producer, len(hashes), expected - 1, None, duplicates)
