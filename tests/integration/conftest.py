"""Integration tests talk to real brokers started once per test session."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from coalmine.config.models import KafkaSettings
from tests.brokers import Mosquitto, Tansu

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Hooks in a conftest see every collected item: mark only the ones below this folder.
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    """A tansu broker for the whole session (sync: it needs no event loop)."""
    with Tansu(log_dir=tmp_path_factory.mktemp("tansu")) as broker:
        yield broker


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
def kafka_settings(kafka_broker: Tansu) -> KafkaSettings:
    """Settings for the session broker, with a consumer group of this test's own."""
    return KafkaSettings(
        bootstrap_servers=kafka_broker.bootstrap,
        idempotent_producer=False,  # tansu has no InitProducerId
        group_id=f"coalmine-test-{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Make topic names unique to this test: ``topic_name("metrics")``."""
    test = re.sub(r"[^a-zA-Z0-9._-]+", "-", request.node.name)[:80]

    def make(base: str = "topic") -> str:
        return f"{base}.{test}.{uuid.uuid4().hex[:8]}"

    return make
