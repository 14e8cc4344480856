"""Real Apache Kafka for tests and benchmarks: one node or a three-node cluster, in KRaft mode.

The broker runs from jars that Maven resolves from Maven Central once into a cache
(``~/.cache/coalmine/kafka-VERSION/libs``, see :func:`kafka_classpath`); later runs reuse
them without Maven. Every node is a combined broker and controller
(``process.roles=broker,controller``) listening on free loopback ports, with its data in a
temporary directory and settings made for tests (small heap, one partition for the internal
topics, no initial rebalance delay, quick fencing of a dead broker).

    with ApacheKafka() as kafka:                  # one node, like support.brokers.Tansu
        settings = KafkaSettings(bootstrap_servers=kafka.bootstrap)

    with ApacheKafkaCluster() as cluster:         # three nodes, RF 3, min.insync.replicas 2
        cluster.create_topics(["orders"], partitions=1)
        leader = cluster.leader("orders", 0)
        cluster.kill_node(leader)                 # kill -9; its data stays
        cluster.wait_for_leader("orders", 0, not_on=leader)
        cluster.restart_node(leader)

Unlike tansu, a killed node keeps its data: ``start()`` / ``restart_node()`` bring it back
with its log, on the same ports. Without Java 17+ (or, before the first resolution, without
Maven) the constructors' ``start()`` raises :class:`KafkaUnavailableError`, which fixtures can
turn into a fallback to tansu. ``python -m support.kafka_broker`` (``scripts/kafka-broker``)
resolves the jars and runs a broker in the foreground.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import concurrent.futures
import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from support.brokers import BrokerProcess, BrokerStartError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping

_log = logging.getLogger(__name__)

#: The pinned Apache Kafka release (``COALMINE_KAFKA_VERSION`` overrides it, for trying others).
KAFKA_VERSION = os.environ.get("COALMINE_KAFKA_VERSION", "4.4.0")
_SCALA = "2.13"
# kafka_2.13 declares no logging backend (and slf4j-api 1.7): the broker logs through
# slf4j 2 to log4j2, into a file per node.
_SLF4J_VERSION = "2.0.17"
_LOG4J_VERSION = "2.25.3"
_DEPENDENCY_PLUGIN = "3.8.1"  # Maven 3.8's default (2.8) predates includeScope fixes
_MIN_JAVA = 17  # Kafka 4 brokers need Java 17

_TOPIC_ALREADY_EXISTS = 36


class KafkaUnavailableError(BrokerStartError):
    """Apache Kafka cannot run here: no Java 17+, or no jars and no Maven to fetch them."""


class _PortTakenError(BrokerStartError):
    """A node could not bind a port (another process took it after we picked it)."""


# -- tools and jars -----------------------------------------------------------------------


def java_binary() -> Path:
    """``$JAVA_HOME/bin/java``, else ``java`` on ``PATH``; it must be Java 17 or newer."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    if candidate is None or not candidate.is_file():
        found = shutil.which("java")
        if found is None:
            msg = "java not found: Apache Kafka needs Java 17+ (Debian: openjdk-17-jre-headless)"
            raise KafkaUnavailableError(msg)
        candidate = Path(found)
    major = _java_major(str(candidate))
    if major < _MIN_JAVA:
        msg = f"{candidate} is Java {major}: Apache Kafka {KAFKA_VERSION} needs Java {_MIN_JAVA}+"
        raise KafkaUnavailableError(msg)
    return candidate


@functools.cache
def _java_version_text(java: str) -> str:
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        msg = f"{java} -version failed: {error}"
        raise KafkaUnavailableError(msg) from error
    return result.stderr + result.stdout


def _java_major(java: str) -> int:
    text = _java_version_text(java)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if match is None:
        msg = f"cannot tell the version of {java}: {text.strip()[:200]}"
        raise KafkaUnavailableError(msg)
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def maven_binary() -> Path:
    """``$MVN``, else ``mvn`` on ``PATH`` (needed only to fill the jar cache)."""
    if explicit := os.environ.get("MVN"):
        return Path(explicit)
    found = shutil.which("mvn")
    if found is None:
        msg = (
            f"mvn not found and Apache Kafka {KAFKA_VERSION}'s jars are not cached "
            f"in {cache_dir()}: install Maven (Debian: apt-get install maven)"
        )
        raise KafkaUnavailableError(msg)
    return Path(found)


def cache_dir(version: str = KAFKA_VERSION) -> Path:
    """Where the jars of ``version`` live: ``$COALMINE_KAFKA_CACHE`` or ``~/.cache/coalmine``."""
    root = os.environ.get("COALMINE_KAFKA_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "coalmine")
    return Path(root) / f"kafka-{version}"


def _pom(version: str) -> str:
    dependencies = [
        ("org.apache.kafka", f"kafka_{_SCALA}", version),
        ("org.slf4j", "slf4j-api", _SLF4J_VERSION),
        ("org.apache.logging.log4j", "log4j-slf4j2-impl", _LOG4J_VERSION),
        ("org.apache.logging.log4j", "log4j-core", _LOG4J_VERSION),
    ]
    deps = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in dependencies
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by support/kafka_broker.py: the runtime of an Apache Kafka broker. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.coalmine.tests</groupId>
  <artifactId>apache-kafka-runtime</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
{deps}
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>{_DEPENDENCY_PLUGIN}</version>
      </plugin>
    </plugins>
  </build>
</project>
"""


def _cached_classpath(directory: Path, pom: str) -> str | None:
    """The classpath of a complete cache made from ``pom``, else None."""
    try:
        if (directory / "pom.xml").read_text() != pom:
            return None
        jars = (directory / "classpath.txt").read_text().split()
    except OSError:
        return None
    if not jars or not all(Path(jar).is_file() for jar in jars):
        return None
    return os.pathsep.join(jars)


def kafka_classpath(version: str = KAFKA_VERSION, *, timeout: float = 600.0) -> str:
    """The broker's classpath, resolving its jars with Maven on the first call.

    Maven copies ``kafka_2.13`` and its runtime dependencies plus a log4j2 backend into
    ``cache_dir(version)/libs`` (``mvn dependency:copy-dependencies`` on a generated pom);
    ``classpath.txt`` beside them lists the jars. Concurrent callers (pytest-xdist workers,
    several scripts) wait on a file lock; later calls only read the file.
    """
    directory = cache_dir(version)
    pom = _pom(version)
    if (cached := _cached_classpath(directory, pom)) is not None:
        return cached
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock_path = directory.parent / f"kafka-{version}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (cached := _cached_classpath(directory, pom)) is not None:
            return cached
        mvn = maven_binary()
        staging = Path(tempfile.mkdtemp(prefix=f"kafka-{version}.", dir=directory.parent))
        try:
            _resolve(mvn, staging, pom, timeout)
            # The jars' paths once the staging directory has become the cache.
            jars = sorted(directory / "libs" / jar.name for jar in (staging / "libs").glob("*.jar"))
            (staging / "classpath.txt").write_text("".join(f"{jar}\n" for jar in jars))
            if directory.exists():
                shutil.rmtree(directory)
            staging.rename(directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    classpath = _cached_classpath(directory, pom)
    if classpath is None:  # pragma: no cover - the directory was just written
        msg = f"the jar cache {directory} is incomplete after resolution"
        raise KafkaUnavailableError(msg)
    return classpath


def _resolve(mvn: Path, staging: Path, pom: str, timeout: float) -> None:
    (staging / "pom.xml").write_text(pom)
    command = [
        str(mvn),
        "--batch-mode",
        "--no-transfer-progress",
        "--file",
        str(staging / "pom.xml"),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging / 'libs'}",
    ]
    _log.info("resolving Apache Kafka jars: %s", " ".join(command))
    started = time.monotonic()
    log_path = staging / "maven.log"
    try:
        with log_path.open("wb") as log:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
                cwd=staging,
            )
    except subprocess.TimeoutExpired as error:
        msg = f"Maven did not resolve Apache Kafka jars within {timeout:g}s"
        raise KafkaUnavailableError(msg) from error
    if result.returncode != 0 or not list((staging / "libs").glob("kafka_*.jar")):
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        msg = f"Maven failed to resolve Apache Kafka (exit {result.returncode}):\n{tail}"
        raise KafkaUnavailableError(msg)
    _log.info("resolved Apache Kafka jars in %.1fs", time.monotonic() - started)


def class_data_options(java: Path, version: str = KAFKA_VERSION) -> dict[str, list[str]]:
    """JVM options that load Kafka's classes from a class-data archive (AppCDS), per kind.

    Class loading is most of a broker's start: with an archive of the classes a start uses,
    a node starts in ~1.7 s instead of ~3 s, and ``StorageTool`` in 0.65 s instead of 1.05 s.
    The archives are made once per cache and JVM (a broker started and stopped cleanly,
    ``-XX:ArchiveClassesAtExit``, ~8 s) and kept in ``cache_dir(version)/cds-*``; a JVM
    that cannot use one ignores it. ``COALMINE_KAFKA_CDS=0`` turns this off.
    Kinds: ``"format"`` and ``"broker"``.
    """
    if os.environ.get("COALMINE_KAFKA_CDS", "1") == "0":
        return {}
    identity = f"{java.resolve()}\n{_java_version_text(str(java))}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    directory = cache_dir(version) / f"cds-{digest}"
    archives = {kind: directory / f"{kind}.jsa" for kind in ("format", "broker")}

    def found() -> dict[str, list[str]] | None:
        if all(path.is_file() for path in archives.values()):
            return {kind: [f"-XX:SharedArchiveFile={path}"] for kind, path in archives.items()}
        return {} if (directory / "failed").exists() else None

    if (options := found()) is not None:
        return options
    with (cache_dir(version).parent / f"kafka-{version}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (options := found()) is not None:
            return options
        directory.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            _train_class_data(archives, version)
        except (BrokerStartError, OSError, subprocess.SubprocessError) as error:
            _log.warning("no class-data archive for Apache Kafka (slower starts): %s", error)
            (directory / "failed").write_text(f"{error}\n")
            return {}
        _log.info("made Apache Kafka's class-data archives in %.1fs", time.monotonic() - started)
    return found() or {}


def _train_class_data(archives: dict[str, Path], version: str) -> None:
    """Format and start one broker, stop it cleanly: the JVMs write their archives."""
    staging = {kind: path.with_suffix(f".{os.getpid()}.tmp") for kind, path in archives.items()}
    trainer = _KRaftCluster(size=1, version=version, start_timeout=120.0)
    trainer._cds = {  # the trainer's own JVMs
        kind: [f"-XX:ArchiveClassesAtExit={path}"] for kind, path in staging.items()
    }
    try:
        trainer.start()
        trainer.stop_node(1, timeout=60)  # SIGTERM: a clean exit writes the archive
    finally:
        trainer.stop()
    for kind, path in staging.items():
        if not path.is_file() or path.stat().st_size == 0:
            msg = f"the JVM wrote no {kind} archive"
            raise BrokerStartError(msg)
    for kind, path in staging.items():
        path.rename(archives[kind])


def unavailable_reason(version: str = KAFKA_VERSION) -> str | None:
    """Why Apache Kafka cannot start here (for ``skipif``), or None; cheap: resolves nothing."""
    try:
        java_binary()
        if _cached_classpath(cache_dir(version), _pom(version)) is None:
            maven_binary()
    except KafkaUnavailableError as error:
        return str(error)
    return None


# -- nodes ----------------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports nobody listens on right now."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _random_cluster_id() -> str:
    """A Kafka ``Uuid`` string: 16 random bytes, URL-safe base64 without padding."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka's own random ids never start with '-'
            return text


_LOG4J2 = """\
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
appender.file.type = File
appender.file.name = file
appender.file.fileName = {path}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
"""


@dataclass
class _Node:
    node_id: int
    broker_port: int
    controller_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    launches: int = 0
    output_path: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int) -> str:
        text: list[str] = []
        for path in (self.output_path, self.log_path):
            if path is not None and path.exists():
                text += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text[-lines:]) if text else "(no log)"


class _KRaftCluster(BrokerProcess):
    """``size`` combined broker+controller nodes on loopback (the shared implementation)."""

    _name = "Apache Kafka"

    def __init__(
        self,
        *,
        size: int,
        log_dir: Path | None = None,
        start_timeout: float = 90.0,
        heap: str = "256m",
        version: str = KAFKA_VERSION,
        broker_ports: list[int] | None = None,
        properties: Mapping[str, str | int] | None = None,
        log_level: str = "INFO",
    ) -> None:
        if broker_ports is not None and len(broker_ports) != size:
            msg = f"broker_ports needs {size} ports"
            raise ValueError(msg)
        self.size = size
        self.start_timeout = start_timeout
        self.heap = heap
        self.version = version
        self.extra_properties = dict(properties or {})
        self.log_level = log_level
        self.cluster_id = ""
        self._fixed_ports = broker_ports
        self._log_dir = log_dir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._nodes: dict[int, _Node] = {}
        self._classpath: str | None = None
        self._java: Path | None = None
        self._cds: dict[str, list[str]] | None = None
        #: Seconds the last ``start()`` took (format + launch + ready); for reports.
        self.startup_seconds: float | None = None

    # -- public -------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """Every node's ``127.0.0.1:PORT``, comma-separated, for ``bootstrap_servers``."""
        if not self._nodes:
            msg = f"{self._name} is not running"
            raise RuntimeError(msg)
        return ",".join(node.address for node in self._nodes.values())

    @property
    def bootstrap(self) -> str:
        """Alias of :attr:`bootstrap_servers` (the name ``Tansu`` uses)."""
        return self.bootstrap_servers

    @property
    def running(self) -> bool:
        """True while every node's process is alive."""
        return bool(self._nodes) and all(node.alive for node in self._nodes.values())

    @property
    def node_ids(self) -> list[int]:
        """The nodes' ids (1 .. size)."""
        return list(range(1, self.size + 1))

    def alive_nodes(self) -> list[int]:
        """Ids of the nodes whose process runs."""
        return [node_id for node_id, node in self._nodes.items() if node.alive]

    def node_bootstrap(self, node_id: int) -> str:
        """``127.0.0.1:PORT`` of one node's broker listener."""
        return self._node(node_id).address

    def node_pid(self, node_id: int) -> int | None:
        """One node's process id while it runs."""
        node = self._node(node_id)
        return node.process.pid if node.alive and node.process is not None else None

    def node_log(self, node_id: int) -> Path:
        """One node's broker log file (log4j2; it survives restarts)."""
        return self._node(node_id).log_path

    def start(self) -> Self:
        """Start every node that is not running; the first call formats fresh storage.

        Returns once each node serves metadata listing every node (bounded by
        ``start_timeout``, with the logs' tails on error). Raises
        :class:`KafkaUnavailableError` without Java (or without jars and Maven).
        """
        if self._nodes and self.running:
            return self
        started = time.monotonic()
        self._java = java_binary()
        self._classpath = kafka_classpath(self.version)
        if self._cds is None:
            self._cds = class_data_options(self._java, self.version)
        try:
            if not self._nodes:
                self._start_fresh()
            else:
                dead = [n for n, node in self._nodes.items() if not node.alive]
                for node_id in dead:
                    self._launch(self._nodes[node_id])
                self._wait_ready(dead, time.monotonic() + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        atexit.unregister(self.stop)
        atexit.register(self.stop)
        self.startup_seconds = time.monotonic() - started
        _log.info("%s (%d node(s)) ready in %.1fs", self._name, self.size, self.startup_seconds)
        return self

    def stop(self) -> None:
        """Kill every node (SIGKILL: the data goes too) and remove temporary files."""
        for node in self._nodes.values():
            _kill(node)
        self._nodes = {}
        atexit.unregister(self.stop)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._log_dir = None

    def kill_node(self, node_id: int) -> None:
        """``kill -9`` one node; its data and ports stay for :meth:`restart_node`."""
        _kill(self._node(node_id))

    def stop_node(self, node_id: int, timeout: float = 30.0) -> None:
        """Stop one node cleanly (SIGTERM: controlled shutdown), SIGKILL after ``timeout``."""
        node = self._node(node_id)
        if node.process is not None and node.process.poll() is None:
            node.process.terminate()
            try:
                node.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill(node)

    def restart_node(self, node_id: int, timeout: float | None = None) -> None:
        """Start a killed or stopped node again (same ports and data); wait until it serves.

        Returns once that node is back in the metadata it serves (it is unfenced); it may
        still be catching up: see :meth:`wait_in_sync`.
        """
        node = self._node(node_id)
        if node.alive:
            _kill(node)
        self._launch(node)
        self._wait_ready([node_id], time.monotonic() + (timeout or self.start_timeout))

    def create_topics(
        self,
        names: Iterable[str] | str,
        partitions: int = 1,
        replication: int | None = None,
        configs: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        """Create topics (existing ones are left alone) and wait until each has leaders.

        ``replication`` defaults to the cluster size (at most 3).
        """
        self._sync(
            lambda: self.create_topics_async(names, partitions, replication, configs, timeout)
        )

    async def create_topics_async(
        self,
        names: Iterable[str] | str,
        partitions: int = 1,
        replication: int | None = None,
        configs: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        """:meth:`create_topics` for a running event loop."""
        from aiokafka.admin import NewTopic  # noqa: PLC0415 - keep imports cheap

        wanted = [names] if isinstance(names, str) else list(names)
        factor = replication or min(self.size, 3)
        topics = [
            NewTopic(name, partitions, factor, topic_configs=dict(configs or {})) for name in wanted
        ]
        async with asyncio.timeout(timeout), self._admin() as admin:
            response = await admin.create_topics(topics)
            problems = [
                f"{item['topic']}: {item.get('error_message') or item['error_code']}"
                for item in response.to_object()["topic_errors"]
                if item["error_code"] not in (0, _TOPIC_ALREADY_EXISTS)
            ]
            if problems:
                msg = f"create_topics failed: {'; '.join(problems)}"
                raise RuntimeError(msg)
            while True:
                described = await admin.describe_topics(wanted)
                if len(described) == len(wanted) and all(
                    topic["error_code"] == 0
                    and len(topic["partitions"]) == partitions
                    and all(p["leader"] >= 0 for p in topic["partitions"])
                    for topic in described
                ):
                    return
                await asyncio.sleep(0.1)

    def leader(self, topic: str, partition: int = 0) -> int | None:
        """The node id leading ``topic``/``partition`` in the metadata, or None if none."""
        return self._sync(lambda: self.leader_async(topic, partition))

    async def leader_async(self, topic: str, partition: int = 0) -> int | None:
        """:meth:`leader` for a running event loop."""
        found = await self._partition(topic, partition)
        leader = found["leader"] if found is not None else -1
        return int(leader) if leader >= 0 else None

    def in_sync_replicas(self, topic: str, partition: int = 0) -> list[int]:
        """The ISR of ``topic``/``partition`` (node ids) in the metadata."""
        return self._sync(lambda: self.in_sync_replicas_async(topic, partition))

    async def in_sync_replicas_async(self, topic: str, partition: int = 0) -> list[int]:
        """:meth:`in_sync_replicas` for a running event loop."""
        found = await self._partition(topic, partition)
        return sorted(found["isr"]) if found is not None else []

    def wait_for_leader(
        self, topic: str, partition: int = 0, *, not_on: int | None = None, timeout: float = 60.0
    ) -> int:
        """Wait until a live node other than ``not_on`` leads the partition; its id."""
        return self._sync(
            lambda: self.wait_for_leader_async(topic, partition, not_on=not_on, timeout=timeout)
        )

    async def wait_for_leader_async(
        self, topic: str, partition: int = 0, *, not_on: int | None = None, timeout: float = 60.0
    ) -> int:
        """:meth:`wait_for_leader` for a running event loop."""

        async def ready() -> int | None:
            leader = await self.leader_async(topic, partition)
            ok = leader is not None and leader != not_on and leader in self.alive_nodes()
            return leader if ok else None

        return await _poll(ready, timeout, f"a leader for {topic}-{partition} (not {not_on})")

    def wait_in_sync(self, topic: str, partition: int = 0, timeout: float = 60.0) -> None:
        """Wait until every node is in the partition's ISR (after a restart, say)."""
        self._sync(lambda: self.wait_in_sync_async(topic, partition, timeout))

    async def wait_in_sync_async(
        self, topic: str, partition: int = 0, timeout: float = 60.0
    ) -> None:
        """:meth:`wait_in_sync` for a running event loop."""

        async def ready() -> bool | None:
            found = await self._partition(topic, partition)
            if found is None:
                return None
            return True if set(found["replicas"]) <= set(found["isr"]) else None

        await _poll(ready, timeout, f"a full ISR for {topic}-{partition}")

    def coordinator(self, group_id: str) -> int:
        """The node id of ``group_id``'s group coordinator (FindCoordinator)."""
        return self._sync(lambda: self.coordinator_async(group_id))

    async def coordinator_async(self, group_id: str, coordinator_type: int = 0) -> int:
        """:meth:`coordinator` for a running event loop (type 1: a transactional id)."""
        async with asyncio.timeout(30), self._admin() as admin:
            while True:
                with contextlib.suppress(Exception):
                    return int(await admin.find_coordinator(group_id, coordinator_type))
                await asyncio.sleep(0.2)

    def transaction_coordinator(self, transactional_id: str) -> int:
        """The node id of ``transactional_id``'s transaction coordinator."""
        return self._sync(lambda: self.coordinator_async(transactional_id, 1))

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of each node's log."""
        return (
            "\n".join(
                f"--- node {node_id} ({node.log_path}) ---\n{node.log_tail(lines)}"
                for node_id, node in self._nodes.items()
            )
            or "(no log)"
        )

    # -- internals ----------------------------------------------------------------------

    def _node(self, node_id: int) -> _Node:
        try:
            return self._nodes[node_id]
        except KeyError:
            msg = f"no node {node_id} (nodes: {sorted(self._nodes) or 'none, not started'})"
            raise KeyError(msg) from None

    def _start_fresh(self) -> None:
        if self._log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="kafka-")
            self._log_dir = Path(self._tmp.name)
        self._log_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.start_timeout
        attempts = 0
        while True:
            attempts += 1
            self._make_nodes()
            try:
                self._format()
                for node in self._nodes.values():
                    self._launch(node)
                self._wait_ready(self.node_ids, deadline)
            except _PortTakenError:
                for node in self._nodes.values():
                    _kill(node)
                self._nodes = {}
                if self._fixed_ports is not None or attempts >= 3 or time.monotonic() > deadline:
                    raise
                continue
            return

    def _make_nodes(self) -> None:
        assert self._log_dir is not None
        ports = _free_ports(2 * self.size)
        broker_ports = self._fixed_ports or ports[: self.size]
        controller_ports = ports[self.size :]
        self.cluster_id = _random_cluster_id()
        self._nodes = {}
        for index, node_id in enumerate(self.node_ids):
            directory = self._log_dir / f"node-{node_id}"
            if directory.exists():
                shutil.rmtree(directory)
            (directory / "data").mkdir(parents=True)
            self._nodes[node_id] = _Node(
                node_id, broker_ports[index], controller_ports[index], directory
            )
        for node in self._nodes.values():
            (node.directory / "server.properties").write_text(self._server_properties(node))
            (node.directory / "log4j2.properties").write_text(
                _LOG4J2.format(level=self.log_level, path=node.log_path)
            )

    def _server_properties(self, node: _Node) -> str:
        replicas = min(self.size, 3)
        min_isr = min(self.size, 2)
        voters = ",".join(
            f"{other.node_id}@127.0.0.1:{other.controller_port}" for other in self._nodes.values()
        )
        settings: dict[str, str | int] = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{node.broker_port},"
                f"CONTROLLER://127.0.0.1:{node.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.broker_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": node.directory / "data",
            # Replication matching the node count; internal topics with one partition
            # (50 by default: slow to create, and nothing here needs them).
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": 1,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": 1,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            "num.partitions": 1,
            "group.initial.rebalance.delay.ms": 0,
            # Tests use session timeouts down to 1 s (the broker's minimum is 6 s).
            "group.min.session.timeout.ms": 500,
            # A killed broker is fenced (and loses its leaderships) within ~3 s, not 9.
            "broker.heartbeat.interval.ms": 500,
            "broker.session.timeout.ms": 3000,
            # Two cores: fewer threads than the defaults (3 network, 8 I/O, 10 background).
            "num.network.threads": 2,
            "num.io.threads": 2,
            "background.threads": 2,
            "num.replica.fetchers": 1,
            "log.cleaner.threads": 1,
            "num.recovery.threads.per.data.dir": 1,
        }
        settings |= self.extra_properties
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _jvm(self, node: _Node, heap: str, kind: str) -> list[str]:
        assert self._java is not None
        assert self._classpath is not None
        return [
            str(self._java),
            *(self._cds or {}).get(kind, []),
            "-Xms32m",
            f"-Xmx{heap}",
            "-XX:+UseSerialGC",  # one GC thread per JVM on a two-core machine
            "-XX:TieredStopAtLevel=1",  # C1 only: faster start, enough for test traffic
            "-XX:-UsePerfData",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            "-Djava.net.preferIPv4Stack=true",
            f"-Dlog4j2.configurationFile={node.directory / 'log4j2.properties'}",
            "-cp",
            self._classpath,
        ]

    def _format(self) -> None:
        """``kafka-storage.sh format`` (``kafka.tools.StorageTool``) for every node, in parallel."""
        formatting = []
        for node in self._nodes.values():
            out = (node.directory / "format.log").open("wb")
            command = [
                *self._jvm(node, "128m", "format"),
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                self.cluster_id,
                "--config",
                str(node.directory / "server.properties"),
            ]
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
            formatting.append((node, process, out))
        failures = []
        for node, process, out in formatting:
            try:
                code = process.wait(timeout=self.start_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            out.close()
            if code != 0:
                text = (node.directory / "format.log").read_text(errors="replace")
                failures.append(f"node {node.node_id} (exit {code}):\n{text[-2000:]}")
        if failures:
            msg = "formatting Kafka storage failed: " + "\n".join(failures)
            raise BrokerStartError(msg)

    def _launch(self, node: _Node) -> None:
        node.launches += 1
        node.output_path = node.directory / f"stdout-{node.launches}.log"
        with node.output_path.open("wb") as out:
            node.process = subprocess.Popen(
                [
                    *self._jvm(node, self.heap, "broker"),
                    "kafka.Kafka",
                    str(node.directory / "server.properties"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is pytest's, not the broker's
            )

    def _fail(self, node: _Node, reason: str) -> BrokerStartError:
        lines = node.log_tail(2000).splitlines()
        errors = [line for line in lines if " ERROR " in line or " FATAL " in line][-5:]
        taken = any("Address already in use" in line for line in lines)
        error_type = _PortTakenError if taken else BrokerStartError
        summary = "errors:\n" + "\n".join(errors) + "\n" if errors else ""
        tail = "\n".join(lines[-25:]) or "(no log)"
        return error_type(
            f"{self._name} node {node.node_id} (broker port {node.broker_port}) {reason}; "
            f"{summary}log tail ({node.log_path}):\n{tail}"
        )

    def _wait_ready(self, node_ids: list[int], deadline: float) -> None:
        """Wait until each of ``node_ids`` listens and serves metadata listing itself and,
        for a fresh start, every node."""
        waiting = list(node_ids)
        expected = set(self.node_ids) if len(node_ids) == self.size else None
        while waiting:
            for node_id in waiting:
                other = self._nodes[node_id]
                if other.process is None or other.process.poll() is not None:
                    code = other.process.returncode if other.process is not None else None
                    raise self._fail(other, f"exited with code {code}")
            node = self._nodes[waiting[0]]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fail(node, f"was not ready within {self.start_timeout:g}s")
            if _listening(node.broker_port):
                want = (expected or set()) | {node.node_id}
                brokers = _run_in_thread(_brokers(node.address, min(remaining, 5.0)))
                if brokers is not None and want <= brokers:
                    waiting.pop(0)
                    continue
            time.sleep(0.1)

    def _live_bootstrap(self) -> str:
        live = [node.address for node in self._nodes.values() if node.alive]
        if not live:
            msg = f"no node of {self._name} is running"
            raise RuntimeError(msg)
        return ",".join(live)

    @contextlib.asynccontextmanager
    async def _admin(self) -> Any:
        from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415 - keep imports cheap

        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._live_bootstrap(), request_timeout_ms=10000
        )
        try:
            await admin.start()
            yield admin
        finally:
            await admin.close()

    async def _partition(self, topic: str, partition: int) -> dict[str, Any] | None:
        async with asyncio.timeout(30), self._admin() as admin:
            for item in await admin.describe_topics([topic]):
                if item["topic"] == topic and item["error_code"] == 0:
                    for found in item["partitions"]:
                        if found["partition"] == partition:
                            return dict(found)
        return None

    def _sync(self, make: Callable[[], Awaitable[Any]]) -> Any:
        async def call() -> Any:
            return await make()

        return _run_in_thread(call())


class ApacheKafka(_KRaftCluster):
    """One Apache Kafka node (broker and controller) on a free loopback port.

    Mirrors ``support.brokers.Tansu``: ``bootstrap``, ``port``, ``pid``, ``running``,
    ``start()``, ``stop()``, ``kill()``, ``log_tail()``, ``log_path`` and the (sync and
    async) context manager, plus ``create_topics()``. Unlike tansu it has
    ``InitProducerId`` and transactions: ``idempotent_producer=True`` works against it.
    ``kill()`` keeps the data and the port: ``start()`` (or ``restart()``) brings the same
    broker back with its log.
    """

    def __init__(
        self,
        *,
        log_dir: Path | None = None,
        start_timeout: float = 60.0,
        port: int | None = None,
        heap: str = "256m",
        version: str = KAFKA_VERSION,
        properties: Mapping[str, str | int] | None = None,
    ) -> None:
        super().__init__(
            size=1,
            log_dir=log_dir,
            start_timeout=start_timeout,
            heap=heap,
            version=version,
            broker_ports=[port] if port else None,
            properties=properties,
        )

    @property
    def port(self) -> int:
        """The broker's port (0 before the first start)."""
        return self._nodes[1].broker_port if self._nodes else 0

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self.node_pid(1) if self._nodes else None

    @property
    def log_path(self) -> Path | None:
        """The broker's log file."""
        return self._nodes[1].log_path if self._nodes else None

    def kill(self) -> None:
        """``kill -9`` the broker; ``start()`` brings it back with its data, on its port."""
        if self._nodes:
            self.kill_node(1)

    def restart(self) -> None:
        """Kill the broker and start it again (same port, same data)."""
        self.restart_node(1)


class ApacheKafkaCluster(_KRaftCluster):
    """Three (``size``) Apache Kafka nodes on loopback, each broker and controller.

    Topics get replication factor 3 and ``min.insync.replicas=2`` by default (also the
    internal offsets and transaction topics), so one node can die without losing
    ``acks=all`` writes. ``kill_node(id)`` is a ``kill -9``; ``restart_node(id)`` brings
    it back with its data. ``leader()``, ``coordinator()`` and ``wait_for_leader()`` ask
    the live nodes' metadata.
    """

    _name = "Apache Kafka cluster"

    def __init__(
        self,
        *,
        size: int = 3,
        log_dir: Path | None = None,
        start_timeout: float = 120.0,
        heap: str = "256m",
        version: str = KAFKA_VERSION,
        broker_ports: list[int] | None = None,
        properties: Mapping[str, str | int] | None = None,
    ) -> None:
        super().__init__(
            size=size,
            log_dir=log_dir,
            start_timeout=start_timeout,
            heap=heap,
            version=version,
            broker_ports=broker_ports,
            properties=properties,
        )


# -- helpers ---------------------------------------------------------------------------------


def _kill(node: _Node) -> None:
    process = node.process
    if process is not None and process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _run_in_thread(coroutine: Awaitable[Any]) -> Any:
    """Run a coroutine on a loop of its own in another thread (works under a running loop)."""

    async def call() -> Any:
        return await coroutine

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, call()).result()


async def _brokers(bootstrap: str, timeout: float) -> set[int] | None:
    """The broker ids in the metadata ``bootstrap`` serves, or None if it serves none yet."""
    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415 - keep imports cheap

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=max(500, int(timeout * 1000))
    )
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            cluster = await admin.describe_cluster()
    except Exception:  # noqa: BLE001 - any failure means "not yet"
        return None
    finally:
        await admin.close()
    if cluster.get("controller_id", -1) < 0:
        return None
    return {int(broker["node_id"]) for broker in cluster["brokers"]}


async def _poll(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if (result := await check()) is not None:
                return result
        except Exception as error:  # noqa: BLE001 - retried until the deadline
            last = error
        await asyncio.sleep(0.2)
    msg = f"no {what} within {timeout:g}s" + (f" (last error: {last!r})" if last else "")
    raise TimeoutError(msg)


# -- command line ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``resolve`` the jars, or ``run`` a broker (or a cluster) in the foreground."""
    parser = argparse.ArgumentParser(
        prog="kafka-broker",
        description=f"Apache Kafka {KAFKA_VERSION} (KRaft) for coalmine's tests.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("resolve", help="resolve the jars with Maven (once) and print the cache")
    run = sub.add_parser("run", help="run a broker in the foreground until Ctrl-C")
    run.add_argument("--port", type=int, default=None, help="broker port (default: a free one)")
    run.add_argument("--nodes", type=int, default=1, help="nodes (3: a cluster with RF 3)")
    run.add_argument("--dir", type=Path, default=None, help="data and logs (default: temporary)")
    run.add_argument("--heap", default="256m", help="JVM -Xmx per node")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "resolve":
            started = time.monotonic()
            jars = kafka_classpath().split(os.pathsep)
            print(f"Apache Kafka {KAFKA_VERSION}: {len(jars)} jars in {cache_dir()}/libs")
            print(f"classpath file: {cache_dir() / 'classpath.txt'}")
            resolved = time.monotonic()
            print(f"jars: {resolved - started:.1f}s", flush=True)
            cds = class_data_options(java_binary())
            archives = " ".join(option for options in cds.values() for option in options)
            print(f"class-data archives: {archives or 'none'}")
            print(f"archives: {time.monotonic() - resolved:.1f}s")
            return 0
        broker: _KRaftCluster
        if args.nodes == 1:
            broker = ApacheKafka(log_dir=args.dir, port=args.port, heap=args.heap)
        else:
            ports = [args.port + i for i in range(args.nodes)] if args.port else None
            broker = ApacheKafkaCluster(
                size=args.nodes, log_dir=args.dir, heap=args.heap, broker_ports=ports
            )
        with broker:
            print(f"bootstrap servers: {broker.bootstrap_servers}", flush=True)
            for node_id in broker.node_ids:
                print(f"node {node_id} log: {broker.node_log(node_id)}", flush=True)
            print(f"ready in {broker.startup_seconds:.1f}s; Ctrl-C stops", flush=True)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            with contextlib.suppress(KeyboardInterrupt):
                while broker.running:
                    time.sleep(0.5)
            if not broker.running:
                print("a node exited:\n" + broker.log_tail(), file=sys.stderr)
                return 1
    except BrokerStartError as error:
        print(f"kafka-broker: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
