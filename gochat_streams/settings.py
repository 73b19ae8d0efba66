"""The one typed settings object. Every knob is read from ``GOCHAT_*`` env vars."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .alerting import AlertThresholds

DAY_MS = 24 * 60 * 60 * 1000
#: aiokafka's default largest produce request, and the least ``producer_max_request_bytes``.
DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
#: The token secret a checkout runs with; only dev mode accepts it.
DEV_AUTH_SECRET = "dev-secret-change-me"
#: The message content key a checkout runs with (devstack.DEV_ENV); only dev mode accepts it.
DEV_CONTENT_KEY = "NMZ/VybCTfqAfNiJifUAs5qvFquaWP8Gmb0tGZXEQnw="
#: A key id of the content keyring (content_crypto.py): it names the key in every envelope.
ContentKeyId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]


class Settings(BaseSettings):
    """Defaults are the spec's production values; the dev stack overrides a few (replicas, timeouts)."""

    model_config = SettingsConfigDict(env_prefix="GOCHAT_", frozen=True, extra="forbid")

    # Broker: ``kafka://host:port[,host:port...]``, a Kafka cluster (gochat_streams/compat/aiokafka.py).
    broker_url: str = "kafka://127.0.0.1:9092"
    broker_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL"] = "PLAINTEXT"
    broker_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    broker_sasl_username: str | None = None
    broker_sasl_password: SecretStr | None = None
    #: A file holding the SASL password (one line), instead of ``broker_sasl_password``.
    broker_sasl_password_file: Path | None = None
    broker_ssl_cafile: Path | None = None
    broker_ssl_certfile: Path | None = None
    broker_ssl_keyfile: Path | None = None

    #: Prefix of every topic and consumer-group name. Empty in production (the spec's
    #: names exactly); tests and shared clusters set one to keep runs apart.
    namespace: str = Field("", pattern=r"^[A-Za-z0-9._-]*$")

    # Topics: the spec's table (partitions 10/3/5, replicas 3/2/3, retention 7 d/1 d/3 d, lz4).
    upstream_partitions: int = Field(10, ge=1)
    upstream_replicas: int = Field(3, ge=1)
    upstream_retention_ms: int = 7 * DAY_MS
    downstream_partitions: int = Field(3, ge=1)
    downstream_replicas: int = Field(2, ge=1)
    downstream_retention_ms: int = 1 * DAY_MS
    task_partitions: int = Field(5, ge=1)
    task_replicas: int = Field(3, ge=1)
    task_retention_ms: int = 3 * DAY_MS
    # im-user-topic: messages re-keyed by recipient, plus presence events (see topics.py).
    user_partitions: int = Field(10, ge=1)
    user_replicas: int = Field(3, ge=1)
    user_retention_ms: int = 1 * DAY_MS
    # im-group-topic: group and conversation messages keyed by group id (see topics.py).
    group_partitions: int = Field(10, ge=1)
    group_replicas: int = Field(3, ge=1)
    group_retention_ms: int = 1 * DAY_MS
    # Dead letters (im-upstream-dlq, im-task-dlq) and alert events (im-alert-topic).
    dlq_partitions: int = Field(3, ge=1)
    dlq_replicas: int = Field(3, ge=1)
    dlq_retention_ms: int = 14 * DAY_MS
    alert_replicas: int = Field(3, ge=1)
    alert_retention_ms: int = 7 * DAY_MS
    compression: Literal["lz4", "gzip", "snappy", "zstd", "none"] = "lz4"
    #: The copies an acks=all write waits for, on every topic and changelog of ours; a topic
    #: takes at most one fewer than its replicas, so that it stays writable with a broker
    #: down (topics.py: min_insync_replicas).
    min_insync_replicas: int = Field(2, ge=1)

    # Consumer-group timing: the spec's 30 s session / 10 s heartbeat. The dev
    # broker joins a group in about half a session timeout, so the dev stack lowers them.
    session_timeout_s: float = 30.0
    heartbeat_interval_s: float = 10.0
    rebalance_timeout_s: float = 60.0

    # Batching against waiting (README, "Performance").
    #: How long a producer holds records to send more of them in one request: a produce
    #: request costs the broker and the client far more than the records in it.
    producer_linger_ms: int = Field(10, ge=0)
    #: The longest a consumer's fetch waits for records. Kafka answers as soon as records
    #: arrive, so this only spaces an idle consumer's requests.
    fetch_max_wait_ms: int = Field(500, ge=1)
    #: The largest produce request of every producer of ours, Faust's included (aiokafka's
    #: ``max_request_size``). A dead letter copies only as much of a record as fits in one
    #: (deadletters.py). It may be raised, not lowered: a letter built without the setting
    #: (the gateway's) is sized for the default. Kafka's broker refuses more than its
    #: ``message.max.bytes`` (about 1 MiB by default) whatever this says.
    producer_max_request_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, ge=DEFAULT_MAX_REQUEST_BYTES)
    #: The most record bytes a producer puts in one batch (a partition's share of a
    #: request; aiokafka's ``max_batch_size``, 16 KiB by default). A group message's
    #: changelog records fill a 16 KiB batch within one event, and each full batch made
    #: the worker wait for the sender and send a request of its own (README, "Performance").
    producer_max_batch_bytes: int = Field(256 * 1024, ge=1024)

    # Worker
    #: Attempts at a record whose handling fails before it is dead-lettered (the spec's 3).
    max_attempts: int = Field(3, ge=1)
    #: Backoff before the first retry; it doubles for each one after.
    retry_backoff_s: float = Field(0.2, ge=0)
    data_dir: Path = Path("data")
    table_store: str = "rocksdb://"
    #: The interface a worker's web server (views, /table/, /metrics) listens on; beyond
    #: loopback only with ``operator_token`` set (operator.py).
    web_bind: str = "127.0.0.1"
    #: How other workers reach this one (Faust's canonical URL: table_route forwards to it).
    web_host: str = "127.0.0.1"
    web_port: int = 6066

    # Routing
    #: Groups up to this size are fanned out by the logic service itself; larger ones
    #: through ``group_fanout`` tasks of ``fanout_batch_size`` members each.
    small_group_max_members: int = Field(200, ge=1)
    fanout_batch_size: int = Field(100, ge=1, le=10_000)
    #: Unacknowledged messages kept per user for reconnect sync; beyond this the oldest
    #: are dropped from the inbox (they stay in the message store's history).
    inbox_max_pending: int = Field(10_000, ge=1)
    #: A message delivered to a user is not delivered to them again for this long
    #: (a client resend, a replay after a crash), keyed by sender and message_id.
    dedup_ttl_s: int = Field(24 * 60 * 60, ge=1)

    # Task service: message store and offline push
    #: ``postgresql://user:pass@host/db`` or ``sqlite:///path``; SQLite in the data dir if unset.
    store_url: str | None = None
    #: Offline pushes are POSTed here when set; otherwise appended to ``push_outbox``.
    push_webhook_url: str | None = None
    push_timeout_s: float = Field(5.0, gt=0)
    #: JSONL outbox of the default pusher; ``<data_dir>/push-outbox.jsonl`` if unset.
    push_outbox: Path | None = None

    # History endpoint
    history_default_limit: int = Field(50, ge=1)
    history_max_limit: int = Field(200, ge=1)
    history_cache_ttl_s: int = Field(300, ge=1)
    #: How long /history waits for Redis before it reads the store instead, and the task
    #: service for an invalidation before it leaves it to be retried (agents/tasks.py).
    history_cache_timeout_s: float = Field(1.0, gt=0)

    #: The dev stack and the tests set this (GOCHAT_DEV_MODE=1): it allows what production
    #: must not run with, such as a default or short token secret.
    dev_mode: bool = False

    # Gateway
    gateway_id: str = Field("gateway_001", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    #: Signs and verifies client tokens (key id ``default``). Outside dev mode the gateway
    #: refuses this default and any secret under 32 bytes (gateway/tokens.py).
    auth_secret: SecretStr = SecretStr(DEV_AUTH_SECRET)
    #: A keyring instead of ``auth_secret``, to rotate without logging everyone out:
    #: JSON ``{"key id": "secret"}``. Tokens are signed with ``auth_signing_key`` (needed
    #: when more than one key is listed) and accepted with any listed key.
    auth_keys: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")], SecretStr] = {}
    auth_signing_key: str | None = None
    token_ttl_s: int = 24 * 60 * 60
    max_frame_bytes: int = 64 * 1024
    #: Frames a socket may send per second on average, and in a burst; beyond, they are
    #: refused with a ``rate_limited`` error frame.
    max_frames_per_s: float = Field(50.0, gt=0)
    max_frames_burst: int = Field(200, ge=1)
    #: A message_id a socket sends again within this window is acknowledged, not resent.
    resend_window_s: float = Field(60.0, ge=0)
    #: How long a sender waits for the broker to take a message before an error frame.
    send_timeout_s: float = Field(10.0, gt=0)
    #: Messages the gateway may hold for the broker at once; beyond, senders get an
    #: error frame at once rather than a growing queue.
    max_unsent: int = Field(10_000, ge=1)
    max_content_chars: int = 10_000
    #: The gateway pings each socket this often and closes it when no pong comes within
    #: half of it (the user goes offline); a client must keep reading to answer.
    ws_heartbeat_s: float = Field(30.0, gt=0)
    #: Frames waiting for one socket (reconnect sync aside: it is bounded by
    #: ``inbox_max_pending``); one more and the socket is closed (going-away).
    ws_send_queue_max: int = Field(1000, ge=1)
    #: A write to a socket that does not drain within this closes it: its client stopped reading.
    ws_send_timeout_s: float = Field(10.0, gt=0)
    #: Open sockets a user may hold on one gateway; a connect beyond it closes the oldest.
    max_sockets_per_user: int = Field(10, ge=1)
    #: What a browser loads (demo chat, ops page); a checkout's ``web/`` by default.
    web_dir: Path = Path(__file__).resolve().parent.parent / "web"

    redis_url: str = "redis://127.0.0.1:6379/0"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: ``json``: one JSON object per log line (logs.py).
    log_format: Literal["text", "json"] = "text"
    #: The fraction of messages whose every hop is logged (trace.py); sampled by message id.
    trace_sample_rate: float = Field(0.01, ge=0, le=1)

    # Message content encryption (issue 15, part "crypto"; content_crypto.py). The gateways and,
    # with a push webhook, the task service need the keyring; the logic service never reads content.
    #: Content keys, JSON ``{"key id": "base64 of 32 random bytes"}``; or ``content_keys_file``.
    content_keys: dict[ContentKeyId, SecretStr] = {}
    #: A JSON key file ``{"current": id, "keys": {id: base64}}``, which ``keys rotate`` writes.
    content_keys_file: Path | None = None
    #: The key that encrypts (the newest); every listed key decrypts. Needed when the keys
    #: are listed in ``content_keys`` and more than one; overrides the key file's ``current``.
    content_key_id: ContentKeyId | None = None
    #: Message content travels and is stored in clear. Without keys a gateway refuses to start
    #: unless this is set: encryption is on by default.
    content_encryption_disabled: bool = False

    @field_validator("content_keys", mode="before")
    @classmethod
    def _content_keys_json(cls, value: object) -> object:
        # As the environment gives it, also when passed in (the dev stack builds Settings from DEV_ENV).
        return json.loads(value) if isinstance(value, str) else value

    # Monitor (gochat_streams/monitor.py): lag, throughput, the alert rules, the ops page
    monitor_host: str = "127.0.0.1"
    monitor_port: int = 6070
    #: Operator endpoints (worker views, /table/, /metrics, the monitor) require
    #: ``Authorization: Bearer <this>`` when set; unset, they serve loopback peers only,
    #: and a process refuses to listen beyond loopback (operator.py).
    operator_token: SecretStr | None = Field(None, min_length=16)
    #: How often the monitor reads offsets and every process evaluates its alert rules.
    monitor_interval_s: float = Field(5.0, gt=0)
    #: Gateways' base URLs whose latency histograms the ops page shows.
    monitor_gateways: list[str] = []
    # The spec's four alert rules (监控和告警); durations are settings so tests use seconds.
    alert_lag_threshold: int = Field(1000, ge=0)
    alert_lag_for_s: float = Field(300, ge=0)
    alert_qps_drop_ratio: float = Field(0.5, gt=0, lt=1)
    alert_qps_window_s: float = Field(300, gt=0)
    #: Throughput is compared with the same window this long ago (a day: traffic follows the day).
    alert_qps_baseline_offset_s: float = Field(86400, gt=0)
    alert_qps_for_s: float = Field(600, ge=0)
    alert_latency_threshold_s: float = Field(5.0, gt=0)
    alert_latency_window_s: float = Field(300, gt=0)
    alert_error_rate_threshold: float = Field(0.01, gt=0)
    alert_error_window_s: float = Field(300, gt=0)
    alert_error_for_s: float = Field(300, ge=0)

    # Audit log and gateway TLS (issue 15, audit: audit.py, gateway/server.py)
    #: im-audit-topic, keyed by the process that writes: a process's hash chain stays on one partition.
    audit_partitions: int = Field(3, ge=1)
    audit_replicas: int = Field(3, ge=1)
    audit_retention_ms: int = 365 * DAY_MS
    #: Audit events a process holds while the broker does not take them; beyond, an event
    #: is only logged, and the chain says how many were left out (audit.py).
    audit_buffer_max: int = Field(10_000, ge=1)
    #: PEM certificate (chain) and private key: set both and the gateway serves https:// and
    #: wss:// only (a plain-http client is refused at the handshake); set neither for plain http.
    gateway_tls_certfile: Path | None = None
    gateway_tls_keyfile: Path | None = None

    def alert_thresholds(self) -> AlertThresholds:
        return AlertThresholds(
            lag_threshold=self.alert_lag_threshold, lag_for_s=self.alert_lag_for_s,
            qps_window_s=self.alert_qps_window_s, qps_baseline_offset_s=self.alert_qps_baseline_offset_s,
            qps_drop_ratio=self.alert_qps_drop_ratio, qps_for_s=self.alert_qps_for_s,
            latency_threshold_s=self.alert_latency_threshold_s, latency_window_s=self.alert_latency_window_s,
            error_rate_threshold=self.alert_error_rate_threshold, error_window_s=self.alert_error_window_s,
            error_for_s=self.alert_error_for_s,
        )

    @property
    def message_store_url(self) -> str:
        return self.store_url or f"sqlite:///{(self.data_dir / 'messages.sqlite3').resolve()}"

    @property
    def push_outbox_path(self) -> Path:
        return self.push_outbox or self.data_dir / "push-outbox.jsonl"

    @field_validator("broker_url")
    @classmethod
    def _kafka_url(cls, url: str) -> str:
        if "://" in url and not url.startswith("kafka://"):
            raise ValueError(f"{url!r}: a broker URL is kafka://host:port[,host:port...]")
        return url

    @model_validator(mode="after")
    def _batch_fits_a_request(self) -> Settings:
        if self.producer_max_batch_bytes > self.producer_max_request_bytes:
            raise ValueError(f"producer_max_batch_bytes ({self.producer_max_batch_bytes}) is over "
                             f"producer_max_request_bytes ({self.producer_max_request_bytes}): a batch is part of a request")
        return self

    @property
    def bootstrap_servers(self) -> list[str]:
        """``host:port`` pairs for plain aiokafka clients (the gateway, admin)."""
        hosts = self.broker_url.split("://", 1)[-1]
        return [h.strip() for h in hosts.replace(";", ",").split(",") if h.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
