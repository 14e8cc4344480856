"""The MQTT transport against a real (Mosquitto) broker: no mocks."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

import aiomqtt
import orjson
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import SecretStr, ValidationError

from coalmine._exceptions import TransportError
from coalmine.bus import Outgoing, Record, Transport
from coalmine.bus.mqtt import MqttTransport, topic_level
from coalmine.config.models import BusSettings, MqttSettings
from coalmine.config.settings import Settings
from support.brokers import Mosquitto, free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

# Names as the daemon would pass them from [topics]; deliberately not the defaults.
TOPICS = {
    "deployments": "in.deployments",
    "metrics": "in.metrics",
    "verdicts": "out.verdicts",
    "dead_letter": "out.dlq",
}
FAST_BACKOFF = (0.05, 0.5)


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test's own: tests share the session broker."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(mqtt_broker: Mosquitto, prefix: str) -> MqttSettings:
    return MqttSettings(port=mqtt_broker.port, topic_prefix=prefix, timeout=3.0)


@pytest.fixture
async def transports() -> AsyncIterator[Callable[..., Awaitable[MqttTransport]]]:
    """Build and start transports; all of them are stopped after the test."""
    made: list[MqttTransport] = []

    async def make(settings: MqttSettings, **options: Any) -> MqttTransport:
        options.setdefault("topic_names", TOPICS)
        options.setdefault("client_id", f"coalmine-test-{uuid.uuid4().hex[:8]}")
        options.setdefault("reconnect_backoff", FAST_BACKOFF)
        transport = MqttTransport(settings, **options)
        made.append(transport)
        await transport.start()
        return transport

    yield make
    for transport in made:
        await transport.stop()


def plain_client(port: int, **options: Any) -> aiomqtt.Client:
    """An MQTT v5 client that is not coalmine: a pipeline, a dashboard, an operator."""
    return aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, **options)


async def receive(client: aiomqtt.Client, n: int, within: float = 5.0) -> list[aiomqtt.Message]:
    """The next ``n`` messages ``client`` receives (fails after ``within`` seconds)."""
    messages: list[aiomqtt.Message] = []
    async with asyncio.timeout(within):
        async for message in client.messages:
            messages.append(message)
            if len(messages) == n:
                break
    return messages


async def fetch_n(transport: MqttTransport, n: int, within: float = 5.0) -> list[Record]:
    """Fetch until ``n`` records arrived (fails after ``within`` seconds)."""
    records: list[Record] = []
    deadline = time.monotonic() + within
    while len(records) < n:
        assert time.monotonic() < deadline, f"got {len(records)} of {n} records"
        records.extend(await transport.fetch(0.2))
    return records


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def user_properties(message: aiomqtt.Message) -> dict[str, str]:
    return dict(getattr(message.properties, "UserProperty", None) or [])


def verdict(service: str, deployment_id: str, decision: str = "continue") -> bytes:
    body = {"verdict_id": f"{deployment_id}/1", "deployment_id": deployment_id}
    return orjson.dumps(body | {"service": service, "decision": decision})


# -- consuming ---------------------------------------------------------------------------


async def test_fetches_input_topics_as_records(
    settings: MqttSettings, prefix: str, transports: Callable[..., Awaitable[MqttTransport]]
) -> None:
    transport = await transports(settings)
    assert isinstance(transport, Transport)
    assert await transport.ready()
    deploy = b'{"event": "started", "deployment_id": "checkout-v42", "service": "checkout"}'
    metrics = [
        b'{"service": "checkout", "metric": "latency_ms", "value": %d}' % i for i in range(3)
    ]
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.UserProperty = [("trace", "abc")]
    async with plain_client(settings.port) as pipeline:
        await pipeline.publish(f"{prefix}/deployments/checkout", deploy, qos=1)
        for value in metrics:
            await pipeline.publish(f"{prefix}/metrics/checkout", value, qos=1)
        await pipeline.publish(
            f"{prefix}/metrics/team%2Fsearch", b"[]", qos=1, properties=properties
        )
        await pipeline.publish(f"{prefix}/elsewhere/checkout", b"ignored", qos=1)

    records = await fetch_n(transport, 5)
    assert [(r.topic, r.key, r.value) for r in records] == [
        ("in.deployments", b"checkout", deploy),
        *(("in.metrics", b"checkout", value) for value in metrics),
        ("in.metrics", b"team/search", b"[]"),
    ]
    assert [r.offset for r in records] == list(range(5))
    assert {r.partition for r in records} == {0}
    assert records[-1].headers == (("trace", b"abc"),)
    assert records[0].headers == ()
    assert records[0].source == "in.deployments/0/0"
    await transport.commit()
    assert await transport.fetch(0.2) == []


async def test_unacknowledged_records_are_redelivered_to_the_same_client_id(
    settings: MqttSettings, prefix: str, transports: Callable[..., Awaitable[MqttTransport]]
) -> None:
    client_id = f"coalmine-redeliver-{uuid.uuid4().hex[:8]}"
    first = await transports(settings, client_id=client_id)
    sent = [b'{"n": %d}' % i for i in range(50)]
    async with plain_client(settings.port) as pipeline:
        for value in sent:
            await pipeline.publish(f"{prefix}/metrics/checkout", value, qos=1)
    assert [r.value for r in await fetch_n(first, len(sent))] == sent
    await first.stop()  # crashed before commit, as far as the broker can tell

    second = await transports(settings, client_id=client_id)
    assert [r.value for r in await fetch_n(second, len(sent))] == sent
    await second.commit()
    await second.stop()

    third = await transports(settings, client_id=client_id)
    assert await third.fetch(0.5) == []


async def test_messages_published_while_away_wait_in_the_session(
    settings: MqttSettings, prefix: str, transports: Callable[..., Awaitable[MqttTransport]]
) -> None:
    client_id = f"coalmine-away-{uuid.uuid4().hex[:8]}"
    await (await transports(settings, client_id=client_id)).stop()
    async with plain_client(settings.port) as pipeline:
        await pipeline.publish(f"{prefix}/deployments/checkout", b"while away", qos=1)
    back = await transports(settings, client_id=client_id)
    assert [r.value for r in await fetch_n(back, 1)] == [b"while away"]


# -- publishing --------------------------------------------------------------------------


async def test_verdicts_are_retained_per_deployment(
    settings: MqttSettings, prefix: str, transports: Callable[..., Awaitable[MqttTransport]]
) -> None:
    transport = await transports(settings, consume=False)
    interim = verdict("checkout", "checkout-v42")
    final = verdict("checkout", "checkout-v42", "promote")
    other = verdict("team/search", "search+v7")
    await transport.publish(
        [
            Outgoing("out.verdicts", interim, b"checkout-v42"),
            Outgoing("out.verdicts", final, b"checkout-v42"),
            Outgoing("out.verdicts", other, b"search+v7"),
        ]
    )
    # A dashboard that connects later sees the last verdict of each deployment.
    async with plain_client(settings.port) as dashboard:
        await dashboard.subscribe(f"{prefix}/verdicts/#", qos=1)
        got = await receive(dashboard, 2)
    by_topic = {m.topic.value: m for m in got}
    assert set(by_topic) == {
        f"{prefix}/verdicts/checkout/checkout-v42",
        f"{prefix}/verdicts/team%2Fsearch/search%2Bv7",
    }
    assert by_topic[f"{prefix}/verdicts/checkout/checkout-v42"].payload == final
    assert by_topic[f"{prefix}/verdicts/team%2Fsearch/search%2Bv7"].payload == other
    assert all(m.retain for m in got)


async def test_dead_letters_carry_headers_as_user_properties(
    settings: MqttSettings, prefix: str, transports: Callable[..., Awaitable[MqttTransport]]
) -> None:
    transport = await transports(settings, consume=False)
    original = b'{"service": "checkout", "good": 5, "total": 3}\xff'
    headers = (
        ("coalmine-error", b"good_exceeds_total: 'good' must not exceed 'total'"),
        ("coalmine-source", b"in.metrics/0/17"),
    )
    async with plain_client(settings.port) as operator:
        await operator.subscribe(f"{prefix}/dlq", qos=1)
        await transport.publish([Outgoing("out.dlq", original, b"checkout", headers)])
        [message] = await receive(operator, 1)
    assert message.topic.value == f"{prefix}/dlq"
    assert message.payload == original
    assert message.qos == 1
    assert not message.retain
    assert user_properties(message) == {
        "coalmine-error": "good_exceeds_total: 'good' must not exceed 'total'",
        "coalmine-source": "in.metrics/0/17",
        "coalmine-key": "checkout",
    }


async def test_input_topics_can_be_published_too(
    settings: MqttSettings, transports: Callable[..., Awaitable[MqttTransport]]
) -> None:
    producer = await transports(settings, consume=False)
    consumer = await transports(settings)
    await producer.publish([Outgoing("in.metrics", b'{"v": 1}', b"checkout")])
    [record] = await fetch_n(consumer, 1)
    assert (record.topic, record.key, record.value) == ("in.metrics", b"checkout", b'{"v": 1}')


async def test_unroutable_messages_fail_the_whole_publish(
    settings: MqttSettings, prefix: str, transports: Callable[..., Awaitable[MqttTransport]]
) -> None:
    transport = await transports(settings, consume=False)
    good = Outgoing("out.verdicts", verdict("checkout", "checkout-v1"), b"checkout-v1")
    bad = [
        Outgoing("coalmine.verdicts", verdict("checkout", "checkout-v1")),  # not a known name
        Outgoing("out.verdicts", b'{"deployment_id": "x"}'),  # no service
        Outgoing("out.verdicts", b"not json"),
        Outgoing("in.metrics", b"{}"),  # no key: no service for the topic
    ]
    for message in bad:
        with pytest.raises(TransportError):
            await transport.publish([good, message])
    async with plain_client(settings.port) as dashboard:
        await dashboard.subscribe(f"{prefix}/verdicts/#", qos=1)
        with pytest.raises(TimeoutError):
            await receive(dashboard, 1, within=0.5)


async def test_publish_without_a_connection_fails(settings: MqttSettings) -> None:
    transport = MqttTransport(settings, topic_names=TOPICS)
    with pytest.raises(TransportError, match="not connected"):
        await transport.publish([Outgoing("out.dlq", b"x")])
    with pytest.raises(TransportError, match="not started"):
        await transport.fetch(0.1)
    assert not await transport.ready()
    await transport.stop()  # safe before start


# -- authentication, authorisation, TLS ----------------------------------------------------


async def test_password_authentication(
    mqtt_broker_auth: Mosquitto,
    prefix: str,
    transports: Callable[..., Awaitable[MqttTransport]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    users = mqtt_broker_auth.users
    caplog.set_level(logging.DEBUG)
    paho_log = logging.getLogger("mqtt")  # paho's own log, via aiomqtt
    level = paho_log.level
    paho_log.setLevel(logging.DEBUG)
    try:
        good = MqttSettings(
            port=mqtt_broker_auth.port,
            topic_prefix=prefix,
            username="coalmine",
            password=SecretStr(users["coalmine"]),
        )
        transport = await transports(good)
        assert await transport.ready()

        wrong = "wr0ng-but-l0ng-Passw0rd"
        bad = good.model_copy(update={"password": SecretStr(wrong)})
        started = time.monotonic()
        with pytest.raises(TransportError) as caught:
            await transports(bad)
        assert time.monotonic() - started < 2.0
        message = str(caught.value)
        assert f"127.0.0.1:{mqtt_broker_auth.port}" in message
        assert "'coalmine'" in message
        assert "Not authorized" in message
        assert "check [mqtt] username and password" in message

        anonymous = good.model_copy(update={"username": None, "password": None})
        with pytest.raises(TransportError):
            await transports(anonymous)
    finally:
        paho_log.setLevel(level)
    for secret in (wrong, users["coalmine"]):
        assert secret not in caplog.text
        assert secret not in message
        assert secret not in repr(caught.value.__cause__)
    assert "CONNECT" in caplog.text  # the log was captured


async def test_a_publish_the_acl_refuses_fails(
    mqtt_broker_auth: Mosquitto, prefix: str, transports: Callable[..., Awaitable[MqttTransport]]
) -> None:
    limited = MqttSettings(
        port=mqtt_broker_auth.port,
        topic_prefix=prefix,
        username="limited",
        password=SecretStr(mqtt_broker_auth.users["limited"]),
    )
    transport = await transports(limited)
    with pytest.raises(TransportError, match="refused by the broker"):
        await transport.publish([Outgoing("out.verdicts", verdict("checkout", "v1"), b"v1")])
    # Input topics are allowed to it: the same connection still works.
    await transport.publish([Outgoing("in.metrics", b"{}", b"checkout")])
    assert len(await fetch_n(transport, 1)) == 1


async def test_tls(tmp_path: Path, transports: Callable[..., Awaitable[MqttTransport]]) -> None:
    async with Mosquitto(tls=True, directory=tmp_path / "broker") as broker:
        assert broker.ca_file is not None
        secure = MqttSettings(port=broker.port, tls=True, ca_file=broker.ca_file, timeout=3.0)
        producer = await transports(secure, consume=False)
        consumer = await transports(secure)
        await producer.publish([Outgoing("in.deployments", b"over tls", b"checkout")])
        assert [r.value for r in await fetch_n(consumer, 1)] == [b"over tls"]

        started = time.monotonic()
        with pytest.raises(TransportError, match="closed the connection before accepting"):
            await transports(secure.model_copy(update={"tls": False, "ca_file": None}))
        assert time.monotonic() - started < 2.0
        missing = secure.model_copy(update={"ca_file": tmp_path / "missing.pem"})
        with pytest.raises(TransportError, match="TLS settings"):
            await transports(missing)
        await producer.stop()
        await consumer.stop()


# paho-mqtt 2.2 does not close the socket of a failed TLS handshake (Client._ssl_wrap_socket).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_tls_rejects_an_unknown_ca(tmp_path: Path) -> None:
    async with Mosquitto(tls=True, directory=tmp_path / "broker") as broker:
        # The system CAs do not know the test CA.
        transport = MqttTransport(MqttSettings(port=broker.port, tls=True, timeout=3.0))
        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            await transport.start()
        gc.collect()  # the leaked socket's warning comes up here, under this test's filters


# -- failures, reconnection, status --------------------------------------------------------


async def test_start_fails_fast_when_no_broker_listens() -> None:
    port = free_port()
    transport = MqttTransport(MqttSettings(port=port, timeout=2.0), topic_names=TOPICS)
    started = time.monotonic()
    with pytest.raises(TransportError, match=f"127.0.0.1:{port}"):
        await transport.start()
    assert time.monotonic() - started < 2.0
    assert not await transport.ready()


async def test_reconnects_after_a_broker_restart(
    tmp_path: Path, transports: Callable[..., Awaitable[MqttTransport]]
) -> None:
    async with Mosquitto(directory=tmp_path / "broker") as broker:
        settings = MqttSettings(port=broker.port, timeout=2.0)
        transport = await transports(settings)
        await asyncio.to_thread(broker.stop)
        await eventually(lambda: _not(transport.ready()))
        assert await transport.fetch(0.1) == []
        with pytest.raises(TransportError, match="not connected"):
            await transport.publish([Outgoing("out.dlq", b"x")])

        await asyncio.to_thread(broker.start)  # same port, but no session: resubscribes
        assert broker.port == settings.port
        await eventually(transport.ready)
        async with plain_client(broker.port) as pipeline:
            await pipeline.publish("coalmine/metrics/checkout", b"after restart", qos=1)
        assert [r.value for r in await fetch_n(transport, 1)] == [b"after restart"]
        await transport.commit()
        await transport.publish([Outgoing("out.dlq", b"published after restart")])
        await transport.stop()


async def test_status_online_then_offline_by_will_and_by_stop(
    settings: MqttSettings, prefix: str, transports: Callable[..., Awaitable[MqttTransport]]
) -> None:
    client_id = f"coalmine-status-{uuid.uuid4().hex[:8]}"
    status = f"{prefix}/status/{topic_level(client_id)}"
    async with plain_client(settings.port) as operator:
        await operator.subscribe(status, qos=1)
        transport = await transports(settings, client_id=client_id)
        assert [m.payload for m in await receive(operator, 1)] == [b"online"]

        # Cut the TCP connection without an MQTT DISCONNECT, as a crash or a network
        # failure would: the broker publishes the will, and the transport reconnects.
        connection = transport._connection
        assert connection is not None
        sock = connection.client._client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        assert [m.payload for m in await receive(operator, 2)] == [b"offline", b"online"]
        await eventually(transport.ready)

        await transport.stop()
        assert [m.payload for m in await receive(operator, 1)] == [b"offline"]

    async with plain_client(settings.port) as late:  # retained for whoever looks later
        await late.subscribe(status, qos=1)
        [message] = await receive(late, 1)
    assert (message.payload, message.retain) == (b"offline", True)


async def _not(value: Awaitable[bool]) -> bool:
    return not await value


# -- configuration -------------------------------------------------------------------------


def test_settings_sections() -> None:
    settings = Settings()
    assert settings.bus == BusSettings(consume=["kafka"], publish=["kafka"])
    assert settings.mqtt.topic_prefix == "coalmine"
    both = Settings(bus={"consume": ["kafka", "mqtt"], "publish": ["mqtt"]})
    assert both.bus.consume == ["kafka", "mqtt"]
    # A configuration may write empty strings for "no credentials".
    unset = MqttSettings.model_validate({"username": "", "password": "", "client_id": ""})
    assert (unset.username, unset.password, unset.client_id) == (None, None, None)
    secret = MqttSettings(username="u", password=SecretStr("hunter2-secret"))
    assert "hunter2-secret" not in repr(secret)
    for bad in ({"consume": []}, {"publish": ["mqtt", "mqtt"]}, {"consume": ["amqp"]}):
        with pytest.raises(ValidationError):
            BusSettings(**bad)
    for wrong in (
        {"password": "p"},  # no username
        {"ca_file": "/ca.pem"},  # tls is off
        {"tls": True, "key_file": "/k.pem"},  # a key without a certificate
        {"topic_prefix": "a/+/b"},
        {"topic_prefix": "a/"},
        {"topic_prefix": "$SYS"},
        {"port": 0},
    ):
        with pytest.raises(ValidationError):
            MqttSettings(**wrong)
