from pathlib import Path

import pytest
from pydantic import ValidationError

from gochat_streams import topics
from gochat_streams.app import create_app
from gochat_streams.kafka import producer_kwargs
from gochat_streams.settings import Settings


def test_defaults_are_the_spec_table(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("GOCHAT_"):
            monkeypatch.delenv(name)
    s = Settings()
    assert [(t.name, t.partitions, t.replicas, t.retention_ms // 86_400_000) for t in topics.core(s)] == [
        ("im-upstream-topic", 10, 3, 7), ("im-group-topic", 10, 3, 1), ("im-user-topic", 10, 3, 1),
        ("im-task-topic", 5, 3, 3), ("im-upstream-dlq", 3, 3, 14), ("im-task-dlq", 3, 3, 14),
        ("im-alert-topic", 1, 3, 7), ("im-audit-topic", 3, 3, 365),
    ]
    down = topics.downstream(s, "gateway_001")
    assert (down.name, down.partitions, down.replicas, down.retention_ms // 86_400_000) == (
        "im-downstream-topic-gateway_001", 3, 2, 1,
    )
    assert all(t.config["compression.type"] == "lz4" for t in [*topics.core(s), down])


def test_consumer_groups_are_the_spec_configuration() -> None:
    s = Settings(namespace="")
    assert topics.logic_group(s) == topics.ConsumerGroup("im-logic-group", "earliest", False, 100, 30000, 10000)
    assert topics.gateway_group(s, "g1") == topics.ConsumerGroup("gateway-g1-group", "latest", True, 50, 30000, 10000)
    assert topics.task_group(s) == topics.ConsumerGroup("im-task-group", "earliest", False, 200, 30000, 10000)


def test_env_overrides_defaults_and_reaches_faust(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOCHAT_BROKER_URL", "kafka://k1:9092,k2:9092")
    monkeypatch.setenv("GOCHAT_UPSTREAM_PARTITIONS", "4")
    monkeypatch.setenv("GOCHAT_SESSION_TIMEOUT_S", "6")
    s = Settings()
    assert s.bootstrap_servers == ["k1:9092", "k2:9092"]
    assert topics.upstream(s).partitions == 4
    app = create_app(s, topics.logic_group(s), topics.logic_topics(s), [])
    assert [str(u) for u in app.conf.broker] == ["kafka://k1:9092", "kafka://k2:9092"]
    assert app.conf.id == "im-logic-group"
    assert app.conf.broker_session_timeout == 6
    assert app.conf.broker_max_poll_records == 100
    assert app.conf.consumer_auto_offset_reset == "earliest"
    task_app = create_app(s, topics.task_group(s), topics.task_topics(s), [])
    assert task_app.conf.id == "im-task-group"
    assert task_app.conf.broker_max_poll_records == 200


def test_explicit_arguments_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOCHAT_GATEWAY_ID", "from_env")
    assert Settings(gateway_id="explicit").gateway_id == "explicit"


def test_settings_are_frozen_and_validated() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.gateway_id = "x"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Settings(gateway_id="has spaces")
    with pytest.raises(ValidationError):
        Settings(upstream_partitions=0)
    with pytest.raises(ValidationError, match="a batch is part of a request"):
        Settings(producer_max_batch_bytes=2 * 1024 * 1024)


def test_every_producer_batches_as_the_setting_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOCHAT_PRODUCER_MAX_BATCH_BYTES", "65536")
    s = Settings()
    assert producer_kwargs(s)["max_batch_size"] == 65536  # the gateways', the monitor's
    app = create_app(s, topics.logic_group(s), topics.logic_topics(s), [])
    assert app.conf.producer_max_batch_size == 65536  # the workers'


def test_the_broker_is_a_kafka_url() -> None:
    assert Settings(broker_url="kafka://a:9092,b:9092").bootstrap_servers == ["a:9092", "b:9092"]
    assert Settings(broker_url="a:9092").bootstrap_servers == ["a:9092"]
    with pytest.raises(ValidationError, match="kafka://"):
        Settings(broker_url="tansu://127.0.0.1:9092")


def test_the_broker_password_comes_from_the_setting_or_a_file(tmp_path: Path) -> None:
    from gochat_streams.kafka import client_kwargs, faust_credentials

    assert "sasl_plain_password" not in client_kwargs(Settings())
    secret = Settings(broker_security_protocol="SASL_PLAINTEXT", broker_sasl_username="logic",
                      broker_sasl_password="pw-setting")
    assert client_kwargs(secret)["sasl_plain_password"] == "pw-setting"
    assert "pw-setting" not in repr(secret)
    (tmp_path / "pw").write_text("pw-file\n")
    from_file = Settings(broker_security_protocol="SASL_PLAINTEXT", broker_sasl_username="logic",
                         broker_sasl_password_file=tmp_path / "pw")
    assert client_kwargs(from_file)["sasl_plain_password"] == "pw-file"
    credentials = faust_credentials(from_file)
    assert credentials is not None and credentials.password == "pw-file"
    assert "pw-file" not in repr(credentials)
