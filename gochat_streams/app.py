"""Builds the two Faust apps, and nothing else: the logic service and the task service.

Faust uses an app's id as its consumer group, so the ids are the spec's
``im-logic-group`` and ``im-task-group``. Start workers with
``faust -A gochat_streams.app:app worker -l info`` (logic) and
``faust -A gochat_streams.app:task_app worker -l info`` (tasks).
"""

from __future__ import annotations

import faust
from aiokafka import AIOKafkaProducer
from faust.types import TransportT

from . import topics
from .audit import AuditLog, producer_send
from .compat import aiokafka as compat_aiokafka
from .compat.aiokafka import track_topic
from .kafka import faust_credentials, producer_kwargs
from .logs import configure as configure_logging
from .metrics import serve_metrics
from .operator import check_listen, operator_middleware
from .settings import Settings, get_settings


#: A worker's liveness views (views.py), open to load balancers: they say nothing about users.
LIVENESS_PATHS = frozenset({"/health/", "/ready/"})


class GochatApp(faust.App):
    """Creates the spec's topics before its consumer subscribes to them.

    A broker that auto-creates topics on a metadata request (Kafka with
    ``auto.create.topics.enable``) would otherwise create them with its own
    partition count, and the tables would no longer match their streams.
    """

    def __init__(self, settings: Settings, group_id: str, audit: AuditLog, own_topics: list[topics.TopicSpec],
                 **options: object) -> None:
        super().__init__(group_id, **options)
        self.gochat_settings = settings
        #: The topics this service reads and writes: it checks they exist, creating the missing ones.
        self.own_topics = own_topics
        #: The worker's audit chain (audit.py): group administration, operator reads.
        self.audit = audit
        self._audit_producer: AIOKafkaProducer | None = None

    # compat/aiokafka.py: why not Faust's own transport.
    def _new_transport(self) -> TransportT:
        return compat_aiokafka.Transport(self.conf.broker_consumer, self)

    def _new_producer_transport(self) -> TransportT:
        return compat_aiokafka.Transport(self.conf.broker_producer, self)

    async def on_first_start(self) -> None:
        # Here, not in create_app: Faust's WEB_BIND variable and ``worker --web-bind`` may
        # have changed the interface since. Before the web server starts (a dependency).
        if self.conf.web_enabled and self.conf.web_transport.scheme == "tcp":
            check_listen(self.conf.web_bind, self.gochat_settings, f"the {self.conf.id} worker's web server")
        await super().on_first_start()
        configure_logging(self.gochat_settings)  # after Faust's worker set up its handlers
        await topics.ensure_topics(self.gochat_settings, self.own_topics, self.audit)

    async def on_started(self) -> None:
        await super().on_started()
        # Faust's router (table_route, /table/ views) asks the producer which partition a
        # key is on, and aiokafka keeps metadata only for topics it tracks: a worker that
        # has not written a table since it started would answer those views with a 500.
        producer = self.producer._ensure_producer()
        for table in self.tables.values():
            track_topic(producer, table.changelog_topic.get_topic_name())
        await producer.client.force_metadata_update()
        # A producer of its own: Faust's stops the worker when the broker refuses a record
        # (compat/aiokafka.py), and an audit event the broker refuses must wait, not crash.
        self._audit_producer = AIOKafkaProducer(**producer_kwargs(self.gochat_settings))
        await self._audit_producer.start()
        self.audit.start(producer_send(self._audit_producer, topics.audit(self.gochat_settings).name))

    async def on_stop(self) -> None:
        await self.audit.close()
        if self._audit_producer is not None:
            await self._audit_producer.stop()
        await super().on_stop()


def create_app(settings: Settings, group: topics.ConsumerGroup, own_topics: list[topics.TopicSpec],
               autodiscover: list[str]) -> GochatApp:
    # "im-logic-group" -> "logic"
    audit = AuditLog(group.group_id.removeprefix(settings.namespace).removeprefix("im-").removesuffix("-group"),
                     buffer_max=settings.audit_buffer_max)
    app = GochatApp(
        settings,
        group.group_id,
        audit,
        own_topics,
        broker=settings.broker_url,
        broker_credentials=faust_credentials(settings),
        store=settings.table_store,
        datadir=str(settings.data_dir),
        autodiscover=autodiscover,
        origin="gochat_streams",
        # Faust commits only what agents have acked, after flushing the producer
        # (faust/transport/consumer.py: _commit_offsets): "commit after processing".
        consumer_auto_offset_reset=group.auto_offset_reset,
        broker_max_poll_records=group.max_poll_records,
        broker_session_timeout=group.session_timeout_ms / 1000,
        broker_heartbeat_interval=group.heartbeat_interval_ms / 1000,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        producer_acks=-1,
        producer_linger=settings.producer_linger_ms / 1000,
        # As every other producer's (kafka.py): dead letters are sized to fit it.
        producer_max_request_size=settings.producer_max_request_bytes,
        producer_max_batch_size=settings.producer_max_batch_bytes,
        producer_compression_type=None if settings.compression == "none" else settings.compression,
        topic_replication_factor=settings.user_replicas,
        topic_disable_leader=True,
        TableManager="gochat_streams.compat.faust:TableManager",
        Table="gochat_streams.compat.faust:Table",
        web_bind=settings.web_bind,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        # Every route of the web server, Faust's own /table/ and /router/ views included,
        # and any view added later (operator.py). Faust forwards a table_route request
        # with the caller's headers, so the owner of the key checks the same token.
        web_application_options={"middlewares": [operator_middleware(settings, LIVENESS_PATHS, audit, {"/metrics"})]},
    )
    serve_metrics(app, "faust_" + group.group_id.removeprefix(settings.namespace))
    return app


settings = get_settings()
app = create_app(
    settings,
    topics.logic_group(settings),
    topics.logic_topics(settings),
    ["gochat_streams.agents.upstream", "gochat_streams.agents.groups", "gochat_streams.agents.delivery",
     "gochat_streams.tables", "gochat_streams.commands", "gochat_streams.views"],
)
task_app = create_app(settings, topics.task_group(settings), topics.task_topics(settings),
                      ["gochat_streams.agents.tasks"])
