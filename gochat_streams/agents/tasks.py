"""The task service: im-task-topic -> message store, offline pushes, group fan-out batches.

Runs in its own Faust app (consumer group ``im-task-group``, app.py). Tasks are taken in
batches of up to ``max.poll.records``: one store transaction persists a batch's
messages, and the offsets are committed only after the batch is handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from faust import StreamT
from redis.asyncio import Redis

from ..app import settings, task_app
from ..channels import task_service_tasks, task_service_user
from ..codecs import DecodeError, decode_task, encode
from ..history import RecentMessages
from ..metrics import reject, tasks_done, tasks_failed
from ..models import Delivery, GroupFanoutTask, OfflinePushTask, PersistMessageTask
from ..push import Pusher, PushFailed, create_pusher
from ..store import MessageStore, open_store
from ..topics import task_group

log = logging.getLogger(__name__)

#: How long a partial batch waits for more tasks before it is handled.
_BATCH_WAIT_S = 0.05


@dataclass
class TaskHandlers:
    store: MessageStore
    recent: RecentMessages
    pusher: Pusher

    async def persist(self, tasks: Sequence[PersistMessageTask]) -> None:
        changed = await self.store.save([t.payload for t in tasks])
        await self.recent.invalidate(changed)
        tasks_done.labels("persist_message").inc(len(tasks))

    async def push(self, task: OfflinePushTask) -> None:
        try:
            await self.pusher.push(task.payload)
        except PushFailed as exc:
            tasks_failed.labels("offline_push").inc()
            log.warning("offline push %s to %s failed: %s", task.task_id, task.payload.user_id, exc)
            return
        tasks_done.labels("offline_push").inc()

    async def fan_out(self, task: GroupFanoutTask) -> None:
        payload = task.payload
        if payload.member_ids is None or payload.message is None:
            reject("task", "missing_field", f"{task.task_id}: group_fanout without member_ids and message")
            return
        excluded = set(payload.exclude_user_ids)
        for member in payload.member_ids:
            if member not in excluded:
                delivery = Delivery(user_id=member, message=payload.message)
                await task_service_user.send(key=member, value=encode(delivery))
        tasks_done.labels("group_fanout").inc()

    async def handle(self, batch: Sequence[bytes]) -> None:
        persists: list[PersistMessageTask] = []
        pushes: list[OfflinePushTask] = []
        fanouts: list[GroupFanoutTask] = []
        for raw in batch:
            try:
                task = decode_task(raw)
            except DecodeError as exc:
                reject("task", exc.reason, exc.detail)
                continue
            if isinstance(task, PersistMessageTask):
                persists.append(task)
            elif isinstance(task, OfflinePushTask):
                pushes.append(task)
            else:
                fanouts.append(task)
        # History first: a push makes its user open the app and read it.
        if persists:
            await self.persist(persists)
        # Concurrently: one slow push endpoint must not cost a batch its sum of timeouts.
        await asyncio.gather(*(self.push(task) for task in pushes))
        for fanout in fanouts:
            await self.fan_out(fanout)


@contextlib.asynccontextmanager
async def task_handlers() -> AsyncIterator[TaskHandlers]:
    store = await open_store(settings.message_store_url)
    redis = Redis.from_url(settings.redis_url)
    pusher = create_pusher(settings)
    try:
        recent = RecentMessages(redis, store, namespace=settings.namespace, size=settings.history_max_limit,
                                ttl_s=settings.history_cache_ttl_s)
        yield TaskHandlers(store, recent, pusher)
    finally:
        await pusher.close()
        await redis.aclose()
        await store.close()


@task_app.agent(task_service_tasks, name="run_tasks")
async def run_tasks(stream: StreamT[bytes]) -> None:
    """im-task-topic -> persist_message, offline_push, group_fanout, a batch at a time."""
    async with task_handlers() as handlers:
        async for batch in stream.take(task_group(settings).max_poll_records, within=_BATCH_WAIT_S):
            await handlers.handle(batch)
