"""The task service: im-task-topic -> message store, offline pushes, group fan-out batches.

Runs in its own Faust app (consumer group ``im-task-group``, app.py). Tasks are taken in
batches of up to ``max.poll.records``: one store transaction persists a batch's
messages, and the offsets are committed only after the batch is handled. A task that
fails ``max_attempts`` times (with backoff) goes to ``im-task-dlq`` with an alert.

After a batch is stored, its conversations' history cache is invalidated. Redis is a
cache: if that fails, the messages are stored all the same (they are not stored again,
nor dead-lettered) and :class:`PendingInvalidations` retries it on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from faust import StreamT
from faust.types import EventT
from redis.asyncio import Redis

from ..app import settings, task_app
from ..channels import task_dead_letters, task_service_tasks, task_service_user
from ..codecs import DecodeError, decode_task, encode
from ..deadletters import retrying
from ..history import RecentMessages
from ..metrics import count_consumed, history_invalidation_failures, tasks_done, tasks_failed
from ..models import DownstreamMessage, GroupFanoutTask, OfflinePushTask, PersistMessageTask, Task
from ..push import Pusher, create_pusher
from ..routing import deliveries
from ..store import MessageStore, open_store
from ..topics import task_group
from ..trace import event_hop

log = logging.getLogger(__name__)

#: How long a partial batch waits for more tasks before it is handled.
_BATCH_WAIT_S = 0.01
#: Conversations invalidated again in one Redis transaction.
_RETRY_CHUNK = 1000
#: The longest wait between attempts at the pending invalidations.
_MAX_RETRY_BACKOFF_S = 10.0
#: Conversations kept pending at most; beyond, the oldest are left to the cache's TTL.
_MAX_PENDING = 100_000


class PendingInvalidations:
    """Conversations whose history cache invalidation failed after their messages were stored.

    Invalidated again in the background, with backoff, until Redis takes it, or until the
    cache's TTL after the last failure: by then whatever was cached before the write has
    expired (the TTL is the backstop). Until then /history may serve the list cached before.
    """

    def __init__(self, recent: RecentMessages, *, ttl_s: float, timeout_s: float, backoff_s: float) -> None:
        self.recent = recent
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.backoff_s = max(backoff_s, 0.1)
        #: conversation id -> when its cached list has surely expired (monotonic), soonest first.
        self._until: dict[str, float] = {}
        self._added = asyncio.Event()
        self._retrying: asyncio.Task[None] | None = None

    async def invalidate(self, conversation_ids: Sequence[str]) -> None:
        """Invalidate now; if Redis fails, keep the conversations for the retries. Never raises."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.recent.invalidate(conversation_ids)
        except Exception as exc:  # a cache: whatever failed, the messages are stored
            history_invalidation_failures.labels("after_store").inc()
            log.warning("history cache invalidation failed after storing %d conversations (%r): retried on its own",
                        len(conversation_ids), exc)
            self._add(conversation_ids)

    def _add(self, conversation_ids: Sequence[str]) -> None:
        until = time.monotonic() + self.ttl_s
        for conversation_id in conversation_ids:
            self._until.pop(conversation_id, None)  # to the end: the newest deadline
            self._until[conversation_id] = until
        while len(self._until) > _MAX_PENDING:
            del self._until[next(iter(self._until))]
            history_invalidation_failures.labels("expired").inc()
        if self._retrying is None:
            self._retrying = asyncio.create_task(self._retry(), name="history cache invalidation retries")
        self._added.set()

    async def _retry(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(min(self.backoff_s * 2 ** failures, _MAX_RETRY_BACKOFF_S))
            self._drop_expired()
            if not self._until:
                failures = 0
                self._added.clear()
                await self._added.wait()
                continue
            attempt = dict(itertools.islice(self._until.items(), _RETRY_CHUNK))
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self.recent.invalidate(list(attempt))
            except Exception as exc:  # still down: the next attempt waits longer
                failures += 1
                history_invalidation_failures.labels("retry").inc()
                log.info("history cache invalidation of %d conversations failed again (%r)", len(attempt), exc)
                continue
            failures = 0
            for conversation_id, until in attempt.items():
                if self._until.get(conversation_id) == until:  # not failed again meanwhile
                    del self._until[conversation_id]
            log.info("history cache invalidated again for %d conversations", len(attempt))

    def _drop_expired(self) -> None:
        now = time.monotonic()
        expired = list(itertools.takewhile(lambda c: self._until[c] <= now, self._until))  # oldest first
        for conversation_id in expired:
            del self._until[conversation_id]
        if expired:
            history_invalidation_failures.labels("expired").inc(len(expired))
            log.warning("gave up invalidating the history cache of %d conversations: their cached lists have "
                        "expired by now", len(expired))

    async def close(self) -> None:
        if self._retrying is not None:
            self._retrying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrying


@dataclass
class TaskHandlers:
    store: MessageStore
    invalidations: PendingInvalidations
    pusher: Pusher

    async def persist(self, tasks: Sequence[PersistMessageTask]) -> None:
        await self.store.save([t.payload for t in tasks])
        tasks_done.labels("persist_message").inc(len(tasks))
        await self.invalidations.invalidate(list(dict.fromkeys(t.payload.conversation_id for t in tasks)))

    async def push(self, task: OfflinePushTask) -> None:
        await self.pusher.push(task.payload)
        tasks_done.labels("offline_push").inc()

    async def fan_out(self, message: DownstreamMessage, tasks: Sequence[GroupFanoutTask]) -> None:
        """The batches of one message, taken together: a Delivery per partition of their members."""
        excluded = {user for t in tasks for user in t.payload.exclude_user_ids}
        members = (member for t in tasks for member in t.payload.member_ids or () if member not in excluded)
        for delivery in deliveries(message, members, settings.user_partitions):
            await task_service_user.send(key=delivery.user_ids[0], value=encode(delivery))
        tasks_done.labels("group_fanout").inc(len(tasks))

    async def handle(self, events: Sequence[EventT]) -> None:
        started = time.perf_counter()
        persists: list[tuple[EventT, PersistMessageTask]] = []
        others: list[tuple[EventT, OfflinePushTask | GroupFanoutTask]] = []
        for event in events:
            try:
                task = decode_task(event.value)
            except DecodeError as exc:
                await task_dead_letters.bury(event, "task", exc.reason, exc.detail)
                continue
            if isinstance(task, GroupFanoutTask) and (task.payload.member_ids is None or task.payload.message is None):
                await task_dead_letters.bury(event, "task", "missing_field",
                                             f"{task.task_id}: group_fanout without member_ids and message")
            elif isinstance(task, PersistMessageTask):
                persists.append((event, task))
            else:
                others.append((event, task))
        # History first: a push makes its user open the app and read it.
        await self._persist_all(persists)
        # Concurrently: one slow push endpoint must not cost a batch its sum of timeouts.
        await asyncio.gather(*(self._push_one(event, task) for event, task in others
                               if isinstance(task, OfflinePushTask)))
        await self._fan_out_all([(event, task) for event, task in others if isinstance(task, GroupFanoutTask)])
        for event, task in [*persists, *others]:
            event_hop("task", task.payload.message_id, event, started, task_type=task.task_type,
                      task_id=task.task_id, batch=len(events))

    async def _persist_all(self, persists: Sequence[tuple[EventT, PersistMessageTask]]) -> None:
        """One transaction for the batch; if it keeps failing, each task on its own, so
        that one bad task is dead-lettered and the others are stored."""
        if not persists:
            return
        failure = await retrying(lambda: self.persist([t for _, t in persists]), attempts=settings.max_attempts,
                                 backoff_s=settings.retry_backoff_s, what=f"persisting {len(persists)} messages",
                                 service="task")
        if failure is None:
            return
        if len(persists) == 1:
            await self._give_up(*persists[0], failure)
            return
        for event, task in persists:
            try:
                await self.persist([task])
            except Exception as exc:  # dead-lettered, with the attempts the batch had
                await self._give_up(event, task, exc)

    async def _fan_out_all(self, fanouts: Sequence[tuple[EventT, GroupFanoutTask]]) -> None:
        """Each message's batches together: a 1,000-member group's 10 tasks become a record per
        partition rather than per task and partition. If that keeps failing, its tasks are dead-lettered."""
        by_message: dict[tuple[str, str, str], tuple[DownstreamMessage, list[tuple[EventT, GroupFanoutTask]]]] = {}
        for event, task in fanouts:
            payload = task.payload
            assert payload.message is not None  # checked in handle()
            key = (payload.group_id, payload.message.from_user_id, payload.message_id)
            by_message.setdefault(key, (payload.message, []))[1].append((event, task))
        for (group_id, _, message_id), (message, batch) in by_message.items():
            tasks = [task for _, task in batch]
            failure = await retrying(lambda: self.fan_out(message, tasks), attempts=settings.max_attempts,
                                     backoff_s=settings.retry_backoff_s,
                                     what=f"group_fanout of {message_id} to {group_id}: {len(tasks)} tasks",
                                     service="task")
            if failure is not None:
                for event, task in batch:
                    await self._give_up(event, task, failure)

    async def _push_one(self, event: EventT, task: OfflinePushTask) -> None:
        failure = await retrying(lambda: self.push(task), attempts=settings.max_attempts,
                                 backoff_s=settings.retry_backoff_s, what=f"{task.task_type} {task.task_id}",
                                 service="task")
        if failure is not None:
            await self._give_up(event, task, failure)

    async def _give_up(self, event: EventT, task: Task, error: BaseException) -> None:
        tasks_failed.labels(task.task_type).inc()
        await task_dead_letters.bury(event, "task", "handler_failed", f"{task.task_id}: {error!r}",
                                     retry_count=settings.max_attempts)


@contextlib.asynccontextmanager
async def task_handlers() -> AsyncIterator[TaskHandlers]:
    store = await open_store(settings.message_store_url)
    redis = Redis.from_url(settings.redis_url)
    pusher = create_pusher(settings)
    try:
        recent = RecentMessages(redis, store, namespace=settings.namespace, size=settings.history_max_limit,
                                ttl_s=settings.history_cache_ttl_s)
        invalidations = PendingInvalidations(recent, ttl_s=settings.history_cache_ttl_s,
                                             timeout_s=settings.history_cache_timeout_s,
                                             backoff_s=settings.retry_backoff_s)
        try:
            yield TaskHandlers(store, invalidations, pusher)
        finally:
            await invalidations.close()
    finally:
        await pusher.close()
        await redis.aclose()
        await store.close()


@task_app.agent(task_service_tasks, name="run_tasks")
async def run_tasks(stream: StreamT[bytes]) -> None:
    """im-task-topic -> persist_message, offline_push, group_fanout, a batch at a time."""
    async with task_handlers() as handlers:
        async for events in stream.take_events(task_group(settings).max_poll_records, within=_BATCH_WAIT_S):
            count_consumed("task", events[0].message.topic, settings.namespace, len(events))
            await handlers.handle(events)
