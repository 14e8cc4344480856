"""Integration tests talk to real brokers started once per test session.

The Kafka broker is Apache Kafka (one KRaft node, ``support/kafka_broker.py``); where it
cannot run (no Java 17+, or no Maven before its jars are cached) the session falls back to
tansu and says so. ``COALMINE_TEST_BROKER`` chooses: ``tansu`` forces tansu (a quick local
run), ``kafka`` forces Apache Kafka and fails when it cannot run; unset (or ``auto``) tries
Apache Kafka first, except that with ``CI`` set (``CI=true``) it must run: no silent fallback.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from coalmine.config.models import KafkaSettings
from support.brokers import Mosquitto, Tansu
from support.kafka_broker import KAFKA_VERSION, ApacheKafka, KafkaUnavailableError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

_HERE = Path(__file__).parent
_log = logging.getLogger(__name__)

BROKER_ENV = "COALMINE_TEST_BROKER"
_BROKER_SUMMARY = pytest.StashKey[str]()


def broker_choice() -> str:
    """``"kafka"``, ``"tansu"`` or ``"auto"`` (Apache Kafka, else tansu), from the environment.

    ``CI`` set to anything but ``""``/``0``/``false`` turns ``auto`` into ``kafka``.
    """
    value = os.environ.get(BROKER_ENV, "").strip().lower() or "auto"
    if value not in ("auto", "kafka", "tansu"):
        msg = f"{BROKER_ENV}={value!r}: expected kafka, tansu or auto"
        raise pytest.UsageError(msg)
    if value == "auto" and os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
        return "kafka"
    return value


def _say(config: pytest.Config, message: str) -> None:
    """A line on the terminal now (past output capture) and in the log."""
    _log.warning("%s", message)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\n{message}", yellow=True, bold=True)
    else:
        reporter.write_line(f"\n{message}", yellow=True, bold=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Hooks in a conftest see every collected item: mark only the ones below this folder.
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    summary = terminalreporter.config.stash.get(_BROKER_SUMMARY, None)
    if summary is not None:
        terminalreporter.write_sep("-", "Kafka broker of the integration tests")
        terminalreporter.write_line(summary)


@pytest.fixture(scope="session")
def kafka_broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApacheKafka | Tansu]:
    """The session's Kafka broker: Apache Kafka, else tansu (see the module's docstring).

    Sync: it needs no event loop. Both have ``bootstrap``, ``port``, ``kill()``,
    ``start()``, ``stop()`` and ``log_tail()``; a killed tansu comes back empty, a killed
    Apache Kafka with its data.
    """
    config = request.config
    choice = broker_choice()
    if choice == "tansu":
        config.stash[_BROKER_SUMMARY] = f"tansu ({BROKER_ENV}=tansu)"
        with Tansu(log_dir=tmp_path_factory.mktemp("tansu")) as broker:
            yield broker
        return
    kafka = ApacheKafka(log_dir=tmp_path_factory.mktemp("apache-kafka"))
    try:
        kafka.start()
    except KafkaUnavailableError as error:
        if choice == "kafka":
            explicit = os.environ.get(BROKER_ENV, "").strip().lower() == "kafka"
            why = f"{BROKER_ENV}=kafka" if explicit else "CI is set"
            msg = f"Apache Kafka {KAFKA_VERSION} is required ({why}) but cannot run: {error}"
            raise KafkaUnavailableError(msg) from error
        reason = str(error).splitlines()[0]
        _say(
            config,
            f"Apache Kafka {KAFKA_VERSION} cannot run here ({reason}): "
            "the integration tests fall back to tansu",
        )
        config.stash[_BROKER_SUMMARY] = f"tansu (fallback: Apache Kafka cannot run: {reason})"
        with Tansu(log_dir=tmp_path_factory.mktemp("tansu")) as fallback:
            yield fallback
        return
    startup = kafka.startup_seconds or 0.0
    config.stash[_BROKER_SUMMARY] = (
        f"Apache Kafka {KAFKA_VERSION} (KRaft, 1 node, {kafka.bootstrap}; ready in {startup:.1f}s)"
    )
    with kafka:
        yield kafka


_MQTT_USERS = {"coalmine": "s3cret-Passw0rd", "limited": "an0ther-secret"}

_MQTT_ACL = """\
user coalmine
topic readwrite #

user limited
topic read #
topic write +/deployments/#
topic write +/metrics/#
topic write +/status/#
"""


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A private Mosquitto for the whole session: anonymous access, no persistence."""
    with Mosquitto(directory=tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture(scope="session")
def mqtt_broker_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A private Mosquitto with password authentication and an ACL.

    Its ``users`` (name -> password): ``coalmine`` may do anything; ``limited`` may read
    everything but write only input and status topics (no verdicts, no dead letters).
    """
    directory = tmp_path_factory.mktemp("mosquitto-auth")
    with Mosquitto(users=_MQTT_USERS, acl=_MQTT_ACL, directory=directory) as broker:
        yield broker


@pytest.fixture
def kafka_settings(kafka_broker: ApacheKafka | Tansu) -> KafkaSettings:
    """Settings for the session broker, with a consumer group of this test's own.

    The idempotent producer (coalmine's default) on Apache Kafka; off on tansu, which has
    no ``InitProducerId``.
    """
    return KafkaSettings(
        bootstrap_servers=kafka_broker.bootstrap,
        idempotent_producer=isinstance(kafka_broker, ApacheKafka),
        group_id=f"coalmine-test-{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Make topic names unique to this test: ``topic_name("metrics")``."""
    test = re.sub(r"[^a-zA-Z0-9._-]+", "-", request.node.name)[:80]

    def make(base: str = "topic") -> str:
        return f"{base}.{test}.{uuid.uuid4().hex[:8]}"

    return make
