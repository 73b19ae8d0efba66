"""Faust's aiokafka transport with a producer that keeps its topics in the metadata it asks for.

aiokafka (0.14) sends to a topic that an earlier *full* metadata fetch knew without
adding it to the topics its client tracks. As soon as any other topic is tracked (the
first send to a topic created later, such as a gateway's downstream topic or a new
changelog), metadata requests name only the tracked topics, every refresh drops the
untracked one from the cluster view, and its batches wait for a partition leader for
ever. Faust commits only after the producer has flushed, so the worker stalls: seen
with ``im-user-topic`` batches stuck while 1,000 users joined a group, on any broker.
This producer tracks each topic before its first send.

It also makes a record the broker refused stop the worker's commits. Faust flushes the
producer before committing offsets, but a record that failed does not fail the flush,
so the offset of the event that produced it would be committed and the record lost.
Here the first failure makes every later flush raise, so no commit passes it, and
crashes the worker; its partitions are handled again from the last commit (by another
worker, or by this one once restarted). The producer is idempotent: a retried batch is
not written twice, and aiokafka then never gives a batch up for a timeout (it sends it
again until the broker takes it, and the flush waits), so what fails a record is an
error that retrying cannot mend (a record over the topic's size limit, a topic this
client may not write).

Its produce requests carry every batch waiting for the broker, not only those whose
linger is over, and the linger spaces a node's requests rather than holding each record
(:class:`NodeDrainingAccumulator`): the gateway's producer does too.
And the worker's own records (changelogs, pushes, tasks) go into their partition's
batch without a future each (:meth:`Producer.append`).

Faust hard-codes a consumer's fetch wait (1,500 ms); here it is
``GOCHAT_FETCH_MAX_WAIT_MS``.

Faust's fetch loop handed each record to its agents through four tasks and an
``asyncio.wait``; here a record whose hand-over need not wait is handed over inline
(:func:`hand_over`).

A read the broker refuses (a topic or the group this worker's principal may not read:
acls.py) is logged and audited as a refused write is, and stops the worker. A refused
fetch reaches Faust's fetch loop, which stopped the worker without naming the principal.
A refused join stayed inside aiokafka (:class:`RefusalReportingCoordinator`): the worker
waited for its partitions for ever, saying nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import functools
import logging
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import KafkaTimeoutError, ProducerClosed
from aiokafka.producer.message_accumulator import MessageAccumulator, MessageBatch
from aiokafka.structs import TopicPartition
from faust.exceptions import ProducerSendError
from faust.transport.drivers import aiokafka as faust_aiokafka

from ..kafka import AUTHORIZATION_ERRORS, is_refusal, refused, refused_resource, wait_until_served
from .faust import flush_changelog

log = logging.getLogger(__name__)


def track_topic(producer: AIOKafkaProducer, topic: str) -> None:
    """Make ``topic`` part of every metadata request of ``producer``'s client."""
    client = producer.client
    if topic not in client._topics:  # the set that add_topic maintains
        client.add_topic(topic)


class NodeDrainingAccumulator(MessageAccumulator):
    """Sends a node every batch it leads once any of them is ready, as Kafka's Java producer does,
    and the linger spaces a node's requests rather than holding each batch back.

    aiokafka drains only the batches whose linger is over, and a node has one request in
    flight at a time; a worker writes to some thirty partitions (downstream, tasks,
    im-user-topic, changelogs), whose lingers run out at different moments, so each of
    its requests carried a record or two. Each request costs the broker and the client
    (syscalls, futures, a response) far more than its records: ``bench logic`` spent a
    fifth of the worker's time writing produce requests to the socket.

    And a batch waited its whole linger even when its node had not had a request for
    longer: a message passes three producers (gateway, worker, worker), so at low load
    three lingers were most of its latency. Here the linger spaces a node's requests:
    a node whose last request is a linger old gets the batches at once; under load a
    node still gets at most a request a linger, as many records in each as before.

    The spacing is as much of the linger as the node is busy, measured by the records it
    was sent in the last linger: full from ``busy_records`` of them, a quarter at a quarter
    of them, none for an idle node. With 1 (the default, a gateway's producer), a node
    sent anything in the last linger waits for the rest of it. The worker's producer has
    32: it sends some six records a message, in a request for each of its two hops
    (``route_upstream``, ``deliver``), each of which waited most of a linger at 100
    msgs/s. A gateway sends one or two records a message: a count that suits the worker
    would leave a loaded gateway's spacing short (a 2 ms linger cost the gateways 20%
    more CPU and the broker 40% at 500 msgs/s), and its requests at low load go at once
    anyway (its node idle for a linger between them).
    """

    #: Records a node sent within a linger from which its requests get the whole linger's spacing.
    _busy_records: int
    #: Each node's requests of the last linger, (when, records), oldest first.
    _sent: dict[int, collections.deque[tuple[float, int]]]

    def _due(self, node: int, now: float) -> float:
        """When the node's next request is due: after its last, by as much of the linger as it is busy."""
        sent = self._recent(node, now)
        if not sent:
            return now
        busy = min(1.0, sum(records for _, records in sent) / self._busy_records)
        return sent[-1][0] + self._linger_time * busy

    def _recent(self, node: int, now: float) -> collections.deque[tuple[float, int]]:
        """The node's requests of the last linger."""
        sent = self._sent.setdefault(node, collections.deque())
        while sent and sent[0][0] <= now - self._linger_time:
            sent.popleft()
        return sent

    def drain_by_nodes(self, ignore_nodes: Any, muted_partitions: frozenset[Any] = frozenset()) -> Any:
        nodes, unknown_leaders_exist = super().drain_by_nodes(ignore_nodes, muted_partitions)
        now, next_due, due_at = time.monotonic(), None, {}
        for tp in list(self._batches):
            leader = self._cluster.leader_for_partition(tp)
            if tp in muted_partitions or leader in (None, -1) or (ignore_nodes and leader in ignore_nodes):
                continue
            if leader not in due_at:
                due_at[leader] = self._due(leader, now)
            if leader not in nodes and (due := due_at[leader]) > now:
                next_due = due if next_due is None else min(next_due, due)
                continue
            if tp not in nodes[leader]:
                batch = self._pop_batch(tp)
                if batch.is_empty():
                    batch.done_noack()  # as aiokafka does with a batch all of whose appends failed
                else:
                    nodes[leader][tp] = batch
        for node, batches in nodes.items():
            self._recent(node, now).append((now, sum(batch.record_count for batch in batches.values())))
        if next_due is not None:
            # Sooner than aiokafka's wake-up for the same batches (their lingers run from
            # their creation, after that node's last request): it replaces that one.
            if self._wakeup_handle is not None:
                self._wakeup_handle.cancel()
            self._wakeup_handle = self._loop.call_later(next_due - now, self._wakeup, self._waiter_future)
        return nodes, unknown_leaders_exist

    async def append(self, tp: TopicPartition, key: bytes | None, value: bytes | None,
                     headers: list[tuple[str, bytes]], timeout: float) -> tuple[MessageBatch, int]:
        """``add_message`` without the record's future: the batch it is in, and its offset there.

        A future a record, each resolved when its batch is done, was 7% of the worker in
        ``bench group``: the batch's own future (``MessageBatch.future``, the base offset,
        or the batch's failure) says the same for all its records.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self._closed:
                raise ProducerClosed()
            if self._exception is not None:
                raise copy.copy(self._exception)
            pending = self._batches.get(tp)
            batch = pending[-1] if pending else self._append_batch(self.create_builder(), tp)
            appended = batch._builder.append(timestamp=None, key=key, value=value, headers=headers)
            if appended is not None:
                return batch, appended.offset
            # Full: wake the sender and wait until it has taken the batch, as add_message does.
            if not self._waiter_future.done():
                self._waiter_future.set_result(None)
            if (left := deadline - time.monotonic()) <= 0:
                raise KafkaTimeoutError()
            await batch.wait_drain(left)


def drain_whole_nodes(producer: AIOKafkaProducer, *, busy_records: int = 1) -> AIOKafkaProducer:
    """Make ``producer`` send all of a node's batches in each request, its requests spaced by
    as much of its linger as the node is busy (:class:`NodeDrainingAccumulator`)."""
    accumulator = producer._message_accumulator
    accumulator.__class__ = NodeDrainingAccumulator
    accumulator._busy_records = busy_records
    accumulator._sent = {}
    return producer


class Producer(faust_aiokafka.Producer):
    #: The first record the broker did not take: from then on nothing is committed.
    unsent: BaseException | None = None
    #: Records sent the broker within a linger at which the worker's requests to it are
    #: spaced by the whole linger (:class:`NodeDrainingAccumulator`): at 10 ms, single chat
    #: at about 500 msgs/s. ``bench e2e`` at 100 msgs/s: a median of 15 ms instead of 27;
    #: at 250 msgs/s the broker's CPU a message +7%, the worker's -3%; at 500 the same.
    busy_records = 32

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The last batch :meth:`append` used per partition, whose failure it watches.
        self._watched: dict[TopicPartition, MessageBatch] = {}

    def _settings_extra(self) -> Mapping[str, Any]:
        # Faust turns idempotence on only for exactly-once processing (KIP-98).
        return {**super()._settings_extra(), "enable_idempotence": True}

    def _new_producer(self, transactional_id: str | None = None) -> AIOKafkaProducer:
        return drain_whole_nodes(super()._new_producer(transactional_id), busy_records=self.busy_records)

    async def send(self, topic: str, *args: Any, **kwargs: Any) -> Any:
        track_topic(self._ensure_producer(), topic)
        sent = await super().send(topic, *args, **kwargs)
        sent.add_done_callback(functools.partial(self._on_sent, topic))
        return sent

    async def append(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
                     headers: list[tuple[str, bytes]] | None = None) -> tuple[MessageBatch, int]:
        """Put a record in its partition's pending batch; the batch, and the record's offset in it.

        What ``send`` does, for records whose own metadata nobody awaits, minus its costs a
        record: Faust's and aiokafka's layers (a metadata wait, the serializers, a signal)
        and the record's future. A batch that fails stops commits, as a failed send does
        (:meth:`_on_sent`, on the batch's future); an oversized record is refused here, as
        ``send`` refuses it. The records of a partition keep the order of the calls.
        """
        producer = self._ensure_producer()
        track_topic(producer, topic)  # known from a full fetch is not enough (module docstring)
        if producer._metadata.partitions_for_topic(topic) is None:
            await producer.client._wait_on_metadata(topic)
        headers = headers or []
        key, value = producer._serialize(key, value, headers)  # and refuses a record over max_request_size
        tp = TopicPartition(topic, producer._partition(topic, partition, None, None, key, value))
        batch, offset = await producer._message_accumulator.append(tp, key, value, headers,
                                                                   producer._request_timeout_ms / 1000)
        if self._watched.get(tp) is not batch:
            self._watched[tp] = batch
            batch.future.add_done_callback(functools.partial(self._on_sent, topic))
        return batch, offset

    def _on_sent(self, topic: str, sent: asyncio.Future) -> None:
        if sent.cancelled() or (error := sent.exception()) is None or self.unsent is not None:
            return
        self.unsent = error
        if is_refusal(error):  # a topic this worker's principal may not write (acls.py)
            refused(self.app.gochat_settings, "Write", f"topic {topic}", error, self.app.audit)
        log.critical("ALERT the broker did not take a record (%r): no more commits; the worker stops, "
                     "and its partitions are handled again from the last commit", error)
        asyncio.ensure_future(self.crash(error))

    async def flush(self) -> None:
        # Faust flushes the producer before every commit: the table writes' changelog
        # records queued and not yet produced go first (compat/faust.py: Table).
        await flush_changelog(self.app)
        await super().flush()
        if self.unsent is not None:
            raise ProducerSendError(f"a record was not sent: {self.unsent!r}") from self.unsent


WaitFirst = Callable[..., Awaitable[Any]]


async def hand_over(record: Coroutine[Any, Any, Any], suspended: Coroutine[Any, Any, Any],
                    wait_first: WaitFirst, *, to_agents: bool = True) -> None:
    """Run ``record`` (the conductor's hand-over of one fetched record to its streams) inline
    as far as it goes without waiting; if it must wait, the rest under ``wait_first`` with
    ``suspended`` (the wait for the consumer's flow to be suspended), as Faust does.

    Faust's fetch loop awaits ``wait_first(record, suspended)`` for every record: mode's
    ``wait_first`` makes four tasks (the two, and the service's stopped and crashed
    events), waits for the first, and cancels the rest. The hand-over almost never waits
    (the flow is on and the stream's queue has room), and then all that is what the
    record costs. Here it runs inline and the loop is yielded to once, as the wait
    yielded, so that the agents take each record before the next (``to_agents``; a
    changelog record goes to the recovery, which takes them a batch at a time, and
    Faust's loop yields every 100 records anyway). When it must wait
    (a full queue, flow control), a rebalance's suspension still cuts the wait short:
    what is left of it runs as a task under ``wait_first``.
    """
    try:
        waiting_on = record.send(None)
    except StopIteration:
        suspended.close()
        if to_agents:
            await asyncio.sleep(0)
        return
    except BaseException:
        suspended.close()
        raise
    await wait_first(asyncio.ensure_future(_resumed(record, waiting_on)), suspended)


async def _resumed(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Any:
    """The rest of ``coro``, which was started outside any task and is waiting on ``waiting_on``."""
    return await _continued(coro, waiting_on)


@types.coroutine
def _continued(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    # What ``await coro`` does from its first suspension on: hand what it waits on to the
    # task driving us, and send (or throw, as in a cancellation) what comes back into it.
    while True:
        try:
            sent = yield waiting_on
        except BaseException as exc:
            step = functools.partial(coro.throw, exc)
        else:
            step = functools.partial(coro.send, sent)
        try:
            waiting_on = step()
        except StopIteration as done:
            return done.value


def set_fetching(consumer: AIOKafkaConsumer, tps: Iterable[Any], *, paused: bool) -> None:
    """Pause (or resume) ``consumer``'s fetches of those of ``tps`` it still has.

    A paused partition's records fetched and not read are dropped: its position has not
    moved past them, so they are fetched again once it is resumed.
    """
    subscription, fetched = consumer._subscription, consumer._fetcher._records
    for tp in (TopicPartition(tp.topic, tp.partition) for tp in tps):
        if not subscription.is_assigned(tp):  # revoked since
            continue
        if paused:
            subscription.pause(tp)
            fetched.pop(tp, None)
        else:
            subscription.resume(tp)


class RefusalReportingCoordinator(GroupCoordinator):
    """aiokafka's group coordinator, which also hands a refusal to its :attr:`report` at once.

    aiokafka keeps an error its coordination routine cannot get past (a join, heartbeat or
    commit the broker refuses) until the consumer's next ``getmany``, and waits for that;
    Faust reads through the consumer's fetcher and never calls it.
    """

    report: Callable[[BaseException], object]

    def _push_error_to_user(self, exc: BaseException) -> Any:
        if is_refusal(exc):
            self.report(exc)
        return super()._push_error_to_user(exc)


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.app.gochat_settings.fetch_max_wait_ms  # read by start()
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        coordinator = self._consumer._coordinator if self._consumer is not None else None
        if type(coordinator) is GroupCoordinator:  # started, it waits for a subscription: none yet
            coordinator.__class__ = RefusalReportingCoordinator
            # This thread runs the consumer on an event loop of its own: the worker's handles it.
            coordinator.report = functools.partial(self.parent_loop.call_soon_threadsafe, self.consumer.refuse_read)

    def set_fetching(self, tps: set[Any], *, paused: bool) -> None:
        """:func:`set_fetching` on this thread's consumer, called from the worker's loop."""
        if self._consumer is not None:
            with contextlib.suppress(RuntimeError):  # the thread's loop is closed: it fetches nothing any more
                self.thread_loop.call_soon_threadsafe(functools.partial(set_fetching, self._consumer, tps,
                                                                        paused=paused))


class Consumer(faust_aiokafka.Consumer):
    """Faust's consumer, whose commits never pass a record that no agent handled.

    Faust acknowledged a record a stream dropped unhandled (it came while the flow was
    stopped for a rebalance, or from an older generation) like a handled one, and it
    committed past the first record after the committed offset when that one alone was
    not handled. Either let the offset of a record nobody handled be committed: a
    worker that died next, or the partition's next owner, never handled it. And it
    handled records it was about to seek back over (:meth:`perform_seek`).

    Faust's pause of a partition (one it will not hand over: a stream's during a
    rebalance, the worker's own tables' changelogs once recovered) only left its records
    unread; aiokafka went on fetching them. A partition's records fetched and not read
    hold every later fetch from that broker for 100 ms (aiokafka's prefetch backoff):
    after each start, the messages of the first second waited that long at each hop
    (``bench e2e``: a p99 of 170 ms at 100 msgs/s, all of it theirs). A pause here stops
    the fetching too.
    """

    #: The first read the broker refused: the worker stops.
    refusal: BaseException | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Offsets sought by the last seek, per partition, until the partition's first record since.
        self._sought: dict[Any, int] = {}

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        # Faust calls it, with these two, for every record its fetch loop reads (hand_over).
        if len(coros) == 2 and timeout is None and _waits_for(coros[1], self.suspend_flow) \
                and not self.suspend_flow.is_set():
            message = coros[0].cr_frame.f_locals.get("message")  # the conductor's on_message(message)
            return await hand_over(coros[0], coros[1], super().wait_first,
                                   to_agents=message is None or not self._is_changelog_tp(message.tp))
        return await super().wait_first(*coros, timeout=timeout)

    def pause_partitions(self, tps: Iterable[Any]) -> None:
        tps = set(tps)
        super().pause_partitions(tps)
        self._thread.set_fetching(tps, paused=True)

    def resume_partitions(self, tps: Iterable[Any]) -> None:
        tps = set(tps)
        super().resume_partitions(tps)
        self._thread.set_fetching(tps, paused=False)

    def refuse_read(self, error: BaseException) -> None:
        """Log and audit the first read the broker refused (a topic's fetch, the group's join), and stop."""
        if self.refusal is None:
            self.refusal = refused(self.app.gochat_settings, "Read", refused_resource(error), error, self.app.audit)
            asyncio.ensure_future(self.app.crash(self.refusal))

    def ack(self, message: Any) -> bool:
        if not message.tracked and self.app.topics.acks_enabled_for(message.topic):
            return False  # dropped by a stream, not handled: read again after the rebalance's seek
        return super().ack(message)

    def _new_offset(self, tp: Any) -> int | None:
        committed = self._committed_offset[tp]
        if committed is not None and committed not in self._acked_index[tp] and not self._gap[tp].at(committed):
            return None
        return super()._new_offset(tp)

    async def perform_seek(self) -> None:
        # Faust resumes a rebalance's stream partitions, then seeks them to the committed
        # offsets: records fetched in between were handled, fetched again after the seek,
        # and dropped by its read-offset bookkeeping, or handled twice out of order.
        # Paused here, in the same step as Faust's resume, no fetch comes in between.
        resumed = {tp for tp in self._get_active_partitions() if not self._is_changelog_tp(tp)}
        self.pause_partitions(resumed)
        try:
            await super().perform_seek()
        finally:
            self.resume_partitions(resumed)
        self._sought = {tp: offset for tp, offset in self._read_offset.items() if offset is not None}

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        try:
            async for tp, message in super().getmany(timeout):
                yield tp, message
                self._sought.pop(tp, None)  # the partition's first record since the seek is in
        except AUTHORIZATION_ERRORS as error:
            self.refuse_read(error)
            raise

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        await super()._add_gap(tp, offset_from, offset_to)
        # Faust takes a read offset for the last record read, but after a seek it is the
        # next one: when a partition's next records are gone (retention), its gap starts
        # one past the sought offset, which then no commit would pass.
        if self._sought.get(tp) == offset_from - 1:
            self._gap[tp].addi(offset_from - 1, offset_from)

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def subscribe(self, topics: Iterable[str]) -> None:
        # Faust creates the tables' changelogs just before it subscribes: a group leader
        # assigning before the brokers serve them would give their partitions to nobody
        # for minutes (kafka.wait_until_served).
        topics = list(topics)
        if not await wait_until_served(self.app.gochat_settings, topics):
            log.warning("subscribing to topics some brokers do not serve yet: %s", topics)
        await super().subscribe(topics)


def _waits_for(coro: Any, event: asyncio.Event) -> bool:
    """Whether ``coro`` is ``event.wait()``, not yet started."""
    return getattr(coro, "cr_code", None) is asyncio.Event.wait.__code__ and coro.cr_frame.f_locals.get("self") is event


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
    Producer = Producer
