"""The gateway's typed application keys (aiohttp ``web.AppKey``): what its handlers share."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiokafka import AIOKafkaProducer

from ..alerting import Observations
from ..audit import AuditLog
from ..content_crypto import ContentKeyring
from ..history import RecentMessages
from ..settings import Settings
from ..store import MessageStore
from .acks import AckForwarder
from .hub import Hub
from .tokens import Keyring

SETTINGS = web.AppKey("settings", Settings)
HUB = web.AppKey("hub", Hub)
PRODUCER = web.AppKey("producer", AIOKafkaProducer)
#: Set once the downstream consumer has its partitions and positions: before that,
#: with ``auto.offset.reset=latest``, a message for a new socket could be skipped.
READY = web.AppKey("ready", asyncio.Event)
#: This gateway's acks on their way to the users' inboxes, many to a record (acks.py).
ACKS = web.AppKey("acks", AckForwarder)
#: Messages handed to the producer and not yet acknowledged by the broker.
UNSENT = web.AppKey("unsent", asyncio.Semaphore)
STORE = web.AppKey("store", MessageStore)
#: The latencies this gateway measured, for the spec's latency alert rule.
LATENCIES = web.AppKey("latencies", Observations)
RECENT = web.AppKey("recent", RecentMessages)
#: The keys that sign and verify client tokens (tokens.py).
KEYRING = web.AppKey("keyring", Keyring)
#: This gateway's audit chain (audit.py): logins, refusals, history reads.
AUDIT = web.AppKey("audit", AuditLog)
#: The keys that seal message content before it enters Kafka and open it for recipients
#: (content_crypto.py); None when content encryption is turned off.
CONTENT_KEYS: web.AppKey[ContentKeyring | None] = web.AppKey("content_keys")
