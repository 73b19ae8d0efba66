"""Builds the Faust app of the logic service, and nothing else.

Faust uses an app's id as its consumer group, so the id is the spec's ``im-logic-group``.
Start a worker with ``faust -A gochat_streams.app worker -l info``.
"""

from __future__ import annotations

import faust

from . import topics
from .kafka import faust_credentials
from .settings import Settings, get_settings


class LogicApp(faust.App):
    """Creates the spec's topics before its consumer subscribes to them.

    A broker that auto-creates topics on a metadata request (Tansu; Kafka with
    ``auto.create.topics.enable``) would otherwise create them with its own
    partition count, and the presence table would no longer match its stream.
    """

    def __init__(self, settings: Settings, **options: object) -> None:
        super().__init__(topics.logic_group(settings).group_id, **options)
        self.gochat_settings = settings

    async def on_first_start(self) -> None:
        await super().on_first_start()
        await topics.ensure_topics(self.gochat_settings, topics.core(self.gochat_settings))


def create_app(settings: Settings) -> LogicApp:
    group = topics.logic_group(settings)
    app = LogicApp(
        settings,
        broker=settings.broker_url,
        broker_credentials=faust_credentials(settings),
        store=settings.table_store,
        datadir=str(settings.data_dir),
        autodiscover=["gochat_streams.agents", "gochat_streams.tables", "gochat_streams.commands"],
        origin="gochat_streams",
        # Faust commits only what agents have acked, after flushing the producer
        # (faust/transport/consumer.py: _commit_offsets): "commit after processing".
        consumer_auto_offset_reset=group.auto_offset_reset,
        broker_max_poll_records=group.max_poll_records,
        broker_session_timeout=group.session_timeout_ms / 1000,
        broker_heartbeat_interval=group.heartbeat_interval_ms / 1000,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        producer_acks=-1,
        producer_compression_type=None if settings.compression == "none" else settings.compression,
        topic_replication_factor=settings.user_replicas,
        topic_disable_leader=True,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
    )
    return app


settings = get_settings()
app = create_app(settings)
