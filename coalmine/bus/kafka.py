"""The Kafka transport (aiokafka) and topic helpers.

At-least-once: auto-commit is off and :meth:`KafkaTransport.commit` commits exactly the
positions handed out by ``fetch`` (not the consumer's prefetch position). Consumed topics
are subscribed by an exact-name pattern, so the consumer never asks the broker to
auto-create a missing topic (a metadata request for a named topic does, on brokers with
``auto.create.topics.enable``, and tansu always does): a missing topic keeps the transport
not ready instead of appearing with a broker-default partition count, and is picked up
within ``metadata_max_age`` once it is created.

A record batch the client cannot unpack (a codec it lacks, a corrupt batch) stops only its
own partition: see :meth:`KafkaTransport.fetch`.

With ``transactional_id`` set, what is published between two commits is one Kafka
transaction, and :meth:`KafkaTransport.commit` adds the consumer offsets to it and commits
it: a ``read_committed`` reader sees a verdict only once the input records that made it
are committed too, so a restart never shows it twice. A transaction that fails is aborted
and reported as :class:`~coalmine._exceptions.TransactionAbortedError`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import (
    CommitFailedError,
    CorruptRecordException,
    KafkaError,
    UnknownError,
    UnsupportedCodecError,
    UnsupportedVersionError,
)
from aiokafka.helpers import create_ssl_context

from coalmine._exceptions import CoalmineError, TransactionAbortedError, TransportError
from coalmine.bus.base import Outgoing, Record, make_record
from coalmine.bus.merge import PartitionMerge
from coalmine.bus.placement import KeyPlacement

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Iterable, Mapping, Sequence

    from coalmine.bus.base import AfterAssign, BeforeRevoke
    from coalmine.config.models import KafkaSettings

__all__ = ["KafkaTransport", "PartitioningError", "ensure_topics", "partition_counts"]

_log = logging.getLogger(__name__)

_TOPIC_EXISTS = 36
"""Kafka error code TOPIC_ALREADY_EXISTS: another process created it first; fine."""
_READY_TTL = 2.0
"""Seconds a positive ``ready()`` answer is reused (negative answers are not cached)."""
_READY_TIMEOUT = 5.0
"""Upper bound on one readiness check, so a probe never waits ``request_timeout``."""
_METADATA_MAX_AGE_MS = 30_000
"""How often the consumer refreshes metadata: a topic created later is picked up by then."""
_SET_ASIDE_FIRST = 5.0
"""Seconds a partition whose records cannot be unpacked is paused before it is retried."""
_SET_ASIDE_MAX = 300.0
"""Upper bound of that pause (it doubles with each failure in a row)."""
_TRUNCATION_GRACE = 30.0
"""Seconds a partition's high watermark must stay below what was already read before the
records are taken for lost. A newly elected leader (a leader killed or stopped, a cluster
restarted from its checkpoints) answers with its own high watermark, which lags the old
leader's until its followers have fetched from it: up to ``replica.lag.time.max.ms``
(30 s by default) while a follower of the ISR is down."""
_METADATA_RETRY_PAUSE = 0.5
"""Seconds between the consumer's metadata updates while no broker answers them."""
_MERGE_WAIT = 2.0
"""Longest a partition that stays behind holds back the other partitions of a merged
topic (see :class:`~coalmine.bus.merge.PartitionMerge`)."""

TopicPartitionKey = tuple[str, int]
"""``(topic, partition)``."""


class PartitioningError(CoalmineError):
    """Topics that must be co-partitioned are not: the daemon refuses to run."""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _ssl_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    """A TLS context from the ``ssl_*`` settings, for SSL and SASL_SSL."""
    if not settings.security_protocol.endswith("SSL"):
        return None
    context: ssl.SSLContext = create_ssl_context(
        cafile=settings.ssl_cafile,
        certfile=settings.ssl_certfile,
        keyfile=settings.ssl_keyfile,
        password=(
            settings.ssl_password.get_secret_value() if settings.ssl_password is not None else None
        ),
    )
    context.check_hostname = settings.ssl_check_hostname
    return context


def _client_options(settings: KafkaSettings) -> dict[str, Any]:
    """Connection and security options shared by the consumer, producer and admin client.

    Build it right at the client's constructor and drop it: it holds the SASL password.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "request_timeout_ms": _ms(settings.request_timeout),
        "security_protocol": settings.security_protocol,
        "ssl_context": _ssl_context(settings),
    }
    if settings.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return options


def _describe(error: BaseException) -> str:
    name, text = type(error).__name__, str(error)
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


@asynccontextmanager
async def _bounded(seconds: float, what: str) -> AsyncIterator[None]:
    """Turn a timeout or a Kafka/socket error inside the block into ``TransportError``."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as err:
        raise TransportError(f"{what}: no answer within {seconds:g}s") from err
    except (KafkaError, OSError) as err:
        raise TransportError(f"{what}: {_describe(err)}") from err


@asynccontextmanager
async def _admin(settings: KafkaSettings) -> AsyncIterator[Any]:
    admin = AIOKafkaAdminClient(**_client_options(settings))
    try:
        async with _bounded(
            settings.request_timeout, f"cannot reach Kafka at {settings.bootstrap_servers}"
        ):
            await admin.start()
        yield admin
    finally:
        await admin.close()


async def _existing_topics(admin: Any) -> dict[str, int]:
    """Every topic the cluster has, with its partition count.

    Asks for all topics: a metadata request naming a missing topic may create it.
    """
    described = await admin.describe_topics()
    return {
        str(topic["topic"]): len(topic["partitions"])
        for topic in described
        if topic["error_code"] == 0
    }


async def partition_counts(settings: KafkaSettings, topics: Iterable[str]) -> dict[str, int]:
    """Partition count of each of ``topics`` that exists; missing topics are left out."""
    wanted = set(topics)
    async with _admin(settings) as admin, _bounded(settings.request_timeout, "describe topics"):
        existing = await _existing_topics(admin)
    return {name: count for name, count in existing.items() if name in wanted}


async def ensure_topics(
    settings: KafkaSettings, topics: Mapping[str, int], *, replication_factor: int = 1
) -> None:
    """Create those of ``topics`` (name -> partition count) that do not exist yet.

    Existing topics are left alone, even with another partition count (logged).
    """
    what = f"create topics {', '.join(sorted(topics))}"
    async with _admin(settings) as admin, _bounded(settings.request_timeout, what):
        existing = await _existing_topics(admin)
        for name, count in existing.items():
            if name in topics and topics[name] != count:
                _log.warning(
                    "topic %s exists with %d partitions (wanted %d)", name, count, topics[name]
                )
        missing = {name: count for name, count in topics.items() if name not in existing}
        if not missing:
            return
        response = await admin.create_topics(
            [NewTopic(name, count, replication_factor) for name, count in missing.items()]
        )
        problems = [
            f"{item['topic']}: {item.get('error_message') or 'error ' + str(item['error_code'])}"
            for item in response.to_object()["topic_errors"]
            if item["error_code"] not in (0, _TOPIC_EXISTS)
        ]
        if problems:
            raise TransportError(f"{what}: {'; '.join(problems)}")
        # Creation is asynchronous on a real cluster: poll the metadata until it shows them.
        while not set(missing) <= (await _existing_topics(admin)).keys():  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        _log.info("created topics %s", ", ".join(f"{n} ({c})" for n, c in missing.items()))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands partition moves to the transport (which tells its owner, the daemon)."""

    def __init__(self, transport: KafkaTransport) -> None:
        self._transport = transport

    async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        async with self._transport._moving():  # noqa: SLF001 - its own listener
            await self._transport._on_revoked(list(revoked))  # noqa: SLF001

    async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        async with self._transport._moving():  # noqa: SLF001
            await self._transport._on_assigned(list(assigned))  # noqa: SLF001


class KafkaTransport:
    """A :class:`~coalmine.bus.base.Transport` over Kafka.

    Args:
        settings: connection, security and client settings.
        consume: topics to read as a member of the consumer group (none: publish only).
        group_id: the consumer group; ``settings.group_id`` when not given.
        auto_offset_reset: where a group starts on a partition it never committed.
        produce: topics this transport publishes to; ``ready()`` requires them too.
        first: topics read up to their end, on every assignment, before the other topics
            are fetched (the deployments topic: Kafka orders partitions, not topics, and
            a metric read before its deployment's ``started`` could not be routed).
        session_timeout: overrides ``settings.session_timeout`` (tansu delays a group
            join by about half of it, so tests use a short one).
        copartitioned: topics that must have equal partition counts (the deployments and
            metrics topics, both keyed by service); checked at start and on every
            assignment, raising :class:`PartitioningError` when they differ.
        merged: topics whose records are handed out in timestamp order across their
            partitions (:class:`~coalmine.bus.merge.PartitionMerge`): inputs whose
            producers do not key them by service, such as the OpenTelemetry Collector.

    Partition moves are reported through :meth:`listen`: before partitions are given up
    (after the daemon finished its batch in hand and committed), and after the new
    assignment, with the partitions lost and the partitions gained. Partitions kept
    across a rebalance resume at the position fetched so far, not at the committed one
    (which may be held back for recovery), so nothing is handled twice.
    """

    def __init__(  # noqa: PLR0913 - keyword-only options of one client
        self,
        settings: KafkaSettings,
        consume: Sequence[str],
        *,
        group_id: str | None = None,
        auto_offset_reset: Literal["earliest", "latest", "none"] = "earliest",
        produce: Sequence[str] = (),
        first: Sequence[str] = (),
        session_timeout: float | None = None,
        copartitioned: Sequence[str] = (),
        merged: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        self.consume = tuple(consume)
        self.produce = tuple(produce)
        self.first = frozenset(first)
        self._catch_up: dict[Any, int] = {}
        self.group_id = group_id or settings.group_id
        self.auto_offset_reset = auto_offset_reset
        self.session_timeout = (
            settings.session_timeout if session_timeout is None else session_timeout
        )
        self._consumer: Any = None
        self._producer: Any = None
        self._admin: Any = None
        self._started = False
        self.copartitioned = tuple(copartitioned)
        self._fetched: dict[TopicPartitionKey, int] = {}
        self._committed: dict[TopicPartitionKey, tuple[int, int]] = {}
        """Per partition: the committed offset, and the position handled up to (its
        metadata; beyond the offset while open deployments hold the offset back)."""
        self._handled: dict[TopicPartitionKey, int] = {}
        self._owned: frozenset[TopicPartitionKey] = frozenset()
        self._fatal: CoalmineError | None = None
        self._before_revoke: BeforeRevoke | None = None
        self._after_assign: AfterAssign | None = None
        self._ready_until = 0.0
        self._ready_lock = asyncio.Lock()
        self._set_aside: dict[Any, float] = {}
        """Partitions paused because a batch could not be unpacked: when to retry each."""
        self._failures: dict[Any, int] = {}
        """Unpacking failures in a row per partition (the pause doubles with each)."""
        self._placement = KeyPlacement()
        self._short_since: dict[TopicPartitionKey, float] = {}
        """Partitions whose high watermark is below what was read: since when."""
        self._forgotten: set[TopicPartitionKey] = set()
        """Partitions kept across a rebalance whose committed offset the group no longer
        has: the broker lost its state, so a log shorter than what was read is lost."""
        self._merge = PartitionMerge(merged, _MERGE_WAIT) if merged else None
        self.unready: str | None = "not connected"
        """Why :meth:`ready` last answered False (None: it answered True)."""
        self._in_transaction = False
        self._settled = asyncio.Event()
        """Set while no partition move is being handled (see :meth:`fetch`)."""
        self._settled.set()
        self._moves = 0

    @asynccontextmanager
    async def _moving(self) -> AsyncIterator[None]:
        """Mark a partition move in progress for the duration of its callback."""
        self._moves += 1
        self._settled.clear()
        try:
            yield
        finally:
            self._settled.set()

    @property
    def transactional(self) -> bool:
        """Whether publishes and commits go through Kafka transactions."""
        return self.settings.transactional_id is not None

    def _reader_options(self) -> dict[str, Any]:
        """Options of a consumer outside the group (``read_committed`` in transactions)."""
        isolation = "read_committed" if self.transactional else "read_uncommitted"
        return {**_client_options(self.settings), "isolation_level": isolation}

    def listen(
        self,
        *,
        before_revoke: BeforeRevoke,
        after_assign: AfterAssign,
    ) -> None:
        """Be told of partition moves.

        ``before_revoke(partitions)`` runs while the partitions are still ours (commit
        there). ``after_assign(lost, gained)`` runs before anything of the new assignment
        is fetched; ``gained`` maps each new partition to its end offset at that moment
        (what lies before it is being re-read, not new).
        """
        self._before_revoke = before_revoke
        self._after_assign = after_assign

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, then start the producer and join the group (bounded waits).

        Raises:
            TransportError: the broker cannot be reached or refused us.
        """
        if self._started:
            return
        settings = self.settings
        timeout = settings.request_timeout
        try:
            self._admin = AIOKafkaAdminClient(**_client_options(settings))
            async with _bounded(timeout, f"cannot reach Kafka at {settings.bootstrap_servers}"):
                await self._admin.start()
            self._producer = AIOKafkaProducer(
                **_client_options(settings),
                acks="all",
                enable_idempotence=settings.idempotent_producer,
                transactional_id=settings.transactional_id,
                max_request_size=settings.max_request_bytes,
            )
            await self._start_producer(timeout)
            if self.consume:
                self._consumer = AIOKafkaConsumer(
                    **_client_options(settings),
                    group_id=self.group_id,
                    enable_auto_commit=False,
                    auto_offset_reset=self.auto_offset_reset,
                    max_poll_records=settings.max_poll_records,
                    fetch_max_wait_ms=_ms(settings.fetch_max_wait),
                    session_timeout_ms=_ms(self.session_timeout),
                    heartbeat_interval_ms=_ms(self.session_timeout / 3),
                    metadata_max_age_ms=_METADATA_MAX_AGE_MS,
                    group_instance_id=settings.group_instance_id,
                    # Range gives each member the same partition numbers of every topic
                    # (equal counts): a service's deploy events and metrics stay together.
                    partition_assignment_strategy=(RangePartitionAssignor,),
                )
                _pace_failed_metadata_updates(self._consumer._client)  # noqa: SLF001
                await self._check_copartitioned()
                pattern = "^(?:" + "|".join(re.escape(t) for t in self.consume) + ")$"
                self._consumer.subscribe(pattern=pattern, listener=_Rebalance(self))
                # Joining waits for the group to rebalance: allow for that beyond a request.
                async with _bounded(
                    2 * timeout + self.session_timeout,
                    f"cannot join consumer group {self.group_id!r}",
                ):
                    await self._consumer.start()
        except BaseException:
            await self._close_clients()
            raise
        self._started = True
        _log.info(
            "kafka transport started: servers=%s group=%s consume=%s produce=%s",
            settings.bootstrap_servers,
            self.group_id,
            ",".join(self.consume) or "-",
            ",".join(self.produce) or "-",
        )

    async def _start_producer(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound, per request
        """Start the producer; a broker that cannot give it a producer id is named as such."""
        try:
            async with _bounded(timeout, "cannot start the Kafka producer"):
                await self._producer.start()
        except TransportError as err:
            cause = err.__cause__
            refused = isinstance(cause, (UnknownError, UnsupportedVersionError))
            if cause is None or not (self.settings.idempotent_producer and refused):
                raise
            fix = (
                ": transactions need a broker that has them; unset [kafka] transactional_id"
                " and set [kafka] idempotent_producer = false"
                if self.transactional
                else ": set [kafka] idempotent_producer = false"
            )
            msg = (
                f"the broker at {self.settings.bootstrap_servers} answers but refused a"
                f" producer id ({_describe(cause)}): it has no idempotent producer"
                f" (InitProducerId; tansu, for one){fix}"
                " (COALMINE_KAFKA__IDEMPOTENT_PRODUCER=false)"
            )
            raise TransportError(msg) from err

    async def stop(self) -> None:
        """Flush the producer, leave the group and disconnect; safe to call twice."""
        self._started = False
        await self._close_clients()

    async def _close_clients(self) -> None:
        if self._in_transaction:
            await self._abort("stopping")
        # The consumer first (it leaves the group), then flush the producer.
        for attribute in ("_consumer", "_producer", "_admin"):
            client = getattr(self, attribute)
            setattr(self, attribute, None)
            if client is None:
                continue
            try:
                async with asyncio.timeout(self.settings.request_timeout):
                    await (client.close() if attribute == "_admin" else client.stop())
            except (KafkaError, OSError, TimeoutError) as err:
                _log.warning("closing the kafka %s: %s", attribute[1:], _describe(err))
        self._fetched.clear()
        self._committed.clear()
        if self._merge is not None:
            self._merge.drop()
        self._owned = frozenset()
        self._short_since.clear()
        self._forgotten.clear()
        self._ready_until = 0.0

    # -- the Transport protocol ----------------------------------------------------------

    async def fetch(self, timeout: float) -> list[Record]:  # noqa: ASYNC109 - the protocol's poll timeout
        """Up to ``max_poll_records`` records, in order per partition; ``[]`` on timeout.

        Records of ``merged`` topics come after the others, in timestamp order across
        their partitions (some may be held for a later fetch: :class:`PartitionMerge`).

        A partition whose next record batch cannot be unpacked (compressed with a codec
        the client lacks, corrupt) is logged with its topic, partition and offset and
        paused (retried after 5 s, doubling up to 5 min); the others go on. aiokafka
        raises such an error out of the whole fetch, after it has moved the position of
        the partitions it had already drained for that fetch: those partitions are sought
        back to what was handed out, so nothing is skipped.
        """
        if not self._started:
            raise TransportError("the kafka transport is not started")
        if self._fatal is not None:
            raise self._fatal
        if self._consumer is None:
            await asyncio.sleep(timeout)
            return []
        # aiokafka fetches for a new assignment while its callback still runs; records
        # handed out then would be handled before the daemon learned what the move means
        # (the published verdicts, how far the partitions were handled). So a fetch waits
        # for a move to finish, and a batch that overlapped one is put back.
        await self._settled.wait()
        moves = self._moves
        batches = await self._getmany(timeout)
        if moves != self._moves or not self._settled.is_set():
            await self._put_back(batches)
            return []
        if self._fatal is not None:
            raise self._fatal
        records = await self._hand_out(batches)
        await self._check_truncated()
        if self._catch_up:
            await self._check_caught_up()
        return records

    async def _hand_out(self, batches: dict[Any, list[Any]]) -> list[Record]:
        """A fetch's records as handed out: per partition, then merged topics' in time order."""
        records: list[Record] = []
        merge = self._merge
        for tp, messages in batches.items():
            if not messages:
                continue
            self._failures.pop(tp, None)
            if merge is not None and tp.topic in merge.topics:
                merge.hold(tp, messages)
                continue
            records.extend(map(_record, messages))
            self._fetched[tp.topic, tp.partition] = messages[-1].offset + 1
            if tp.topic in self.copartitioned:
                self._check_placement(tp, messages)
        if merge is not None and len(merge):
            records.extend(await self._release_merged(merge))
        return records

    async def _release_merged(self, merge: PartitionMerge) -> list[Record]:
        """The held records of merged topics that can go now, in timestamp order."""
        consumer = self._consumer
        owned = consumer.assignment()
        drained = set()
        for tp in owned:
            end = consumer.highwater(tp)
            if tp.topic in merge.topics and end is not None and await consumer.position(tp) >= end:
                drained.add(tp)
        released = merge.release(owned, drained.__contains__, time.monotonic())
        for tp, message in released:
            self._fetched[tp.topic, tp.partition] = message.offset + 1
        return [_record(message) for _, message in released]

    async def _put_back(self, batches: dict[Any, list[Any]]) -> None:
        """Seek each partition of ``batches`` back to its first record, once the move is done."""
        await self._settled.wait()
        consumer = self._consumer
        if consumer is None:
            return
        owned = consumer.assignment()
        for tp, messages in batches.items():
            if messages and tp in owned:
                consumer.seek(tp, messages[0].offset)

    def _check_placement(self, tp: Any, messages: list[Any]) -> None:
        """Count the keyed records a producer put where murmur2 would not have."""
        partitions = len(self._consumer.partitions_for_topic(tp.topic) or ())
        check = self._placement.check
        for message in messages:
            check(tp.topic, tp.partition, message.key, partitions)

    def misplaced(self) -> dict[str, int]:
        """Keyed records of the co-partitioned topics off their murmur2 partition, per topic.

        Their producer used another partitioner: they may miss their deployment.
        """
        return dict(self._placement.misplaced)

    async def _getmany(self, timeout: float) -> dict[Any, list[Any]]:  # noqa: ASYNC109
        if self._set_aside:
            self._retry_set_aside()
        try:
            batches: dict[Any, list[Any]] = await self._consumer.getmany(
                timeout_ms=_ms(timeout), max_records=self.settings.max_poll_records
            )
        except Exception as err:
            if not _undecodable(err):
                raise TransportError(f"fetch from Kafka: {_describe(err)}") from err
            try:
                return await self._isolate(err, timeout)
            except KafkaError as again:  # e.g. a partition taken away meanwhile
                raise TransportError(f"fetch from Kafka: {_describe(again)}") from again
        return batches

    async def _isolate(self, error: Exception, timeout: float) -> dict[Any, list[Any]]:  # noqa: ASYNC109
        """After a fetch failed on a batch it could not unpack: find and pause its partition.

        Every partition is first sought back to what was handed out (the failed fetch may
        have moved some past records it then dropped), then read one record at a time, a
        partition at a time, until one fails (it is set aside) or ``timeout`` passes.
        Returns the records read meanwhile, as ``getmany`` would.
        """
        consumer = self._consumer
        _log.warning("fetch from Kafka: %s; finding the partition", _describe(error))
        await self._rewind()
        batches: dict[Any, list[Any]] = {}
        budget = self.settings.max_poll_records
        deadline = time.monotonic() + timeout
        found = False
        while budget > 0 and not found and time.monotonic() < deadline:
            for tp in sorted(consumer.assignment() - consumer.paused()):
                while budget > 0:
                    try:
                        got = await consumer.getmany(tp, timeout_ms=0, max_records=1)
                    except Exception as err:
                        if not _undecodable(err):
                            raise TransportError(f"fetch from Kafka: {_describe(err)}") from err
                        await self._set_partition_aside(tp, err)
                        found = True
                        break
                    messages = got.get(tp)
                    if not messages:
                        break
                    batches.setdefault(tp, []).extend(messages)
                    budget -= len(messages)
            if not found and budget > 0:
                await asyncio.sleep(0.05)  # sought partitions are fetched again meanwhile
        return batches

    async def _rewind(self) -> None:
        """Seek every partition back to the position after the last record handed out.

        A partition nothing was handed out from yet goes back to its committed offset (or,
        with none, to its beginning when ``auto_offset_reset`` is ``earliest``).
        """
        consumer = self._consumer
        if self._merge is not None:
            self._merge.drop()  # held records lie beyond what was handed out
        for tp in consumer.assignment():
            position = self._fetched.get((tp.topic, tp.partition))
            if position is None:
                async with _bounded(self.settings.request_timeout, "read committed offsets"):
                    position = await consumer.committed(tp)
            if position is not None:
                consumer.seek(tp, position)
            elif self.auto_offset_reset == "earliest":
                await consumer.seek_to_beginning(tp)

    async def _set_partition_aside(self, tp: Any, error: Exception) -> None:
        consumer = self._consumer
        failures = self._failures[tp] = self._failures.get(tp, 0) + 1
        pause = min(_SET_ASIDE_FIRST * 2 ** (failures - 1), _SET_ASIDE_MAX)
        offset = await consumer.position(tp)
        consumer.pause(tp)
        self._set_aside[tp] = time.monotonic() + pause
        if tp in self._catch_up:
            del self._catch_up[tp]  # the other topics must not wait for it
        _log.error(
            "%s/%d: cannot unpack the record batch at offset %d (%s); this partition is"
            " not read for %gs, the others go on",
            tp.topic,
            tp.partition,
            offset,
            _describe(error),
            pause,
        )

    def _retry_set_aside(self) -> None:
        now = time.monotonic()
        due = [tp for tp, until in self._set_aside.items() if until <= now]
        for tp in due:
            del self._set_aside[tp]
        due = [tp for tp in due if tp in self._consumer.assignment()]
        if due and not self._catch_up:
            self._consumer.resume(*due)

    async def _check_truncated(self) -> None:
        """Notice a partition whose log now ends before what was already read.

        That happens when the broker lost records (a broker restarted without its data, an
        unclean leader election). Some brokers then answer fetches beyond the end with
        nothing rather than an out-of-range error, so the consumer would wait there
        forever: read the partition again from its beginning instead.
        """
        consumer = self._consumer
        now = time.monotonic()
        for tp in consumer.assignment():
            key = (tp.topic, tp.partition)
            fetched = self._fetched.get(key)
            end = consumer.highwater(tp)
            if fetched is None or end is None or end >= fetched:
                self._short_since.pop(key, None)
                continue
            since = self._short_since.setdefault(key, now)
            if key not in self._forgotten and now - since < _TRUNCATION_GRACE:
                continue  # a new leader's high watermark catches up within that
            del self._short_since[key]
            self._forgotten.discard(key)
            _log.error(
                "%s/%d ends at offset %d, before the %d already read: the broker lost records"
                " (restarted without its data?); reading it again from its beginning; open"
                " deployments are kept from memory, what was lost cannot be recovered",
                tp.topic,
                tp.partition,
                end,
                fetched,
            )
            await consumer.seek_to_beginning(tp)
            self._fetched[key] = 0
            self._committed.pop(key, None)
            if self._merge is not None:
                self._merge.drop([tp])

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Send every message at once and return when the broker acknowledged them all.

        Raises:
            TransportError: a message was refused or not acknowledged in time.
        """
        if self._producer is None:
            raise TransportError("the kafka transport is not started")
        if not messages:
            return
        if self.transactional and not self._in_transaction:
            # Nothing is lost if this fails: the caller retries the same messages.
            async with _bounded(self.settings.request_timeout, "begin a Kafka transaction"):
                await self._producer.begin_transaction()
            self._in_transaction = True
        try:
            await self._send_all(messages)
        except TransportError as err:
            if self._in_transaction:
                await self._abort(str(err))
                raise TransactionAbortedError(str(err)) from err
            raise

    async def _send_all(self, messages: Sequence[Outgoing]) -> None:
        futures: list[Any] = []
        outcomes: list[Any] = []
        # aiokafka expires undelivered batches after request_timeout; this is the backstop.
        async with _bounded(2 * self.settings.request_timeout + 1, "publish to Kafka"):
            try:
                for message in messages:  # a loop, so a failed send keeps the earlier futures
                    futures.append(  # noqa: PERF401 - see the loop's comment
                        await self._producer.send(
                            message.topic,
                            message.value,
                            key=message.key,
                            headers=list(message.headers),
                        )
                    )
            finally:
                # Await what was queued even when a later send failed: no orphan futures.
                outcomes = await asyncio.gather(*futures, return_exceptions=True)
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            count = f"{len(failures)} of {len(messages)} messages"
            raise TransportError(
                f"publish to Kafka: {count} not acknowledged: {_describe(failures[0])}"
            ) from failures[0]

    async def commit(self, floors: Mapping[TopicPartitionKey, int] | None = None) -> None:
        """Commit the positions after every record fetched so far, held back to ``floors``.

        Only partitions whose committed offset changes are sent.
        """
        if self._consumer is None or not self._fetched:
            if self._in_transaction:
                await self._commit_transaction({})
            return
        floors = floors or {}
        assigned = self._consumer.assignment()
        wanted: dict[TopicPartitionKey, tuple[int, int]] = {}
        for key, position in self._fetched.items():
            offset = min(position, floors.get(key, position))
            if self._committed.get(key) != (offset, position):
                wanted[key] = (offset, position)
        offsets = {
            tp: committed
            for (topic, partition), committed in wanted.items()
            if (tp := TopicPartition(topic, partition)) in assigned
        }
        if self.transactional:
            if offsets or self._in_transaction:
                await self._commit_transaction(offsets)
        elif offsets:
            await self._commit_offsets(offsets)

    async def _commit_offsets(self, offsets: dict[Any, tuple[int, int]]) -> None:
        """Commit ``{tp: (offset, handled)}`` as a member of the group."""
        if self._consumer._coordinator.generation < 0:  # noqa: SLF001 - no public accessor
            # Out of the group (its coordinator forgot it, or it is rejoining): aiokafka
            # would send this as a standalone commit, which a broker that lost its data
            # accepts into logs recreated since; the next owner re-reads from the last
            # commit instead.
            _log.info("commit skipped: not a member of group %r right now", self.group_id)
            return
        async with _bounded(self.settings.request_timeout, "commit offsets to Kafka"):
            try:
                await self._consumer.commit(_with_metadata(offsets))
            except CommitFailedError as err:
                # The group rebalanced under us: the new owner of these partitions (possibly
                # us again) reads them from the last commit: at-least-once.
                _log.warning("commit skipped, the group rebalanced: %s", _describe(err))
                return
        for tp, committed in offsets.items():
            self._committed[tp.topic, tp.partition] = committed

    async def _commit_transaction(self, offsets: dict[Any, tuple[int, int]]) -> None:
        """Add ``offsets`` to the open transaction (begun if none is) and commit it.

        Raises:
            TransactionAbortedError: the broker refused or did not answer, and the aborted
                transaction held published messages.
            TransportError: the same, for a transaction of offsets only (nothing is lost:
                they are committed with the next one).
        """
        producer = self._producer
        published = self._in_transaction
        try:
            async with _bounded(self.settings.request_timeout, "commit a Kafka transaction"):
                if not self._in_transaction:
                    await producer.begin_transaction()
                    self._in_transaction = True
                if offsets:
                    await producer.send_offsets_to_transaction(
                        _with_metadata(offsets), self.group_id
                    )
                await producer.commit_transaction()
        except TransportError as err:
            await self._abort(str(err))
            if published:
                raise TransactionAbortedError(str(err)) from err
            raise
        self._in_transaction = False
        for tp, committed in offsets.items():
            self._committed[tp.topic, tp.partition] = committed

    async def _abort(self, why: str) -> None:
        """Abort the open transaction, best effort.

        A broker that does not answer aborts it itself when the transaction times out, or
        when this transactional id starts again.

        Positions fetched since the last commit are forgotten: the records behind them
        made what the transaction held, so they must be read again, never committed.
        """
        self._in_transaction = False
        self._fetched = {key: handled for key, (_, handled) in self._committed.items()}
        try:
            async with _bounded(self.settings.request_timeout, "abort a Kafka transaction"):
                await self._producer.abort_transaction()
        except (TransportError, KafkaError) as err:
            _log.debug("aborting the transaction (%s) failed: %s", why, _describe(err))

    async def ready(self) -> bool:
        """True when the broker answers and every consumed and produced topic exists."""
        admin = self._admin
        if not self._started or admin is None:
            self.unready = "not connected"
            return False
        if time.monotonic() < self._ready_until:
            return True
        async with self._ready_lock:
            if time.monotonic() < self._ready_until:
                return True
            try:
                async with asyncio.timeout(min(self.settings.request_timeout, _READY_TIMEOUT)):
                    existing = await _existing_topics(admin)
            except Exception as err:  # noqa: BLE001 - readiness must never raise
                self.unready = f"the brokers do not answer ({_describe(err)})"
                return False
            missing = [t for t in (*self.consume, *self.produce) if t not in existing]
            if missing:
                self.unready = f"missing topics: {', '.join(missing)} (create them)"
                return False
            was_missing = self.unready is not None and self.unready.startswith("missing topics")
            if was_missing and self._consumer is not None:
                # The consumer would see topics created since at its next metadata refresh,
                # up to metadata_max_age later: refresh now, so they are read in seconds.
                self._consumer._client.force_metadata_update()  # noqa: SLF001
            self.unready = None
            self._ready_until = time.monotonic() + _READY_TTL
            return True

    # -- extras --------------------------------------------------------------------------

    def assignment(self) -> frozenset[TopicPartitionKey]:
        """The partitions this member currently owns."""
        if self._consumer is None:
            return frozenset()
        return frozenset((tp.topic, tp.partition) for tp in self._consumer.assignment())

    def lag(self) -> dict[str, int]:
        """Records between what was fetched and the log end, per topic (owned partitions)."""
        consumer = self._consumer
        if consumer is None:
            return {}
        lag: dict[str, int] = {}
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is None:
                continue
            fetched = self._fetched.get((tp.topic, tp.partition), 0)
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, end - fetched)
        return lag

    async def read_topic(self, topic: str) -> list[Record]:
        """Every record of ``topic`` now in the log, read outside the consumer group.

        Used to learn the verdicts already published; a missing topic reads as empty.
        """
        if not self._started:
            raise TransportError("the kafka transport is not started")
        reader = AIOKafkaConsumer(
            **self._reader_options(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        records: list[Record] = []
        what = f"read {topic}"
        try:
            async with _bounded(self.settings.request_timeout, what):
                await reader.start()
                # A consumer outside a group has no metadata for a topic it was not told
                # of (Apache Kafka answers its first metadata request with none): ask.
                count = (await partition_counts(self.settings, [topic])).get(topic, 0)
                tps = [TopicPartition(topic, p) for p in range(count)]
                if not tps:
                    return records
                reader.assign(tps)
                ends = await reader.end_offsets(tps)
                await reader.seek_to_beginning(*tps)
            remaining = {tp for tp, end in ends.items() if end > 0}
            while remaining:
                async with _bounded(self.settings.request_timeout, what):
                    batches = await reader.getmany(*remaining, timeout_ms=1000)
                for tp, messages in batches.items():
                    # Some brokers (tansu) answer ListOffsets with the last record batch's
                    # base offset + 1: the fetch's high watermark is the real end.
                    ends[tp] = max(ends[tp], reader.highwater(tp) or 0)
                    records.extend(_record(m) for m in messages if m.offset < ends[tp])
                for tp in list(remaining):
                    if await reader.position(tp) >= max(ends[tp], reader.highwater(tp) or 0):
                        remaining.discard(tp)
        finally:
            await reader.stop()
        return records

    async def follow(self, topics: Sequence[str]) -> AsyncIterator[list[Record]]:
        """Every record of ``topics``, from their beginning on, as they arrive.

        Read outside the consumer group (every daemon sees every partition); partitions
        that appear later are picked up within ``metadata_max_age``.

        Raises:
            TransportError: the broker cannot be reached.
        """
        reader = AIOKafkaConsumer(
            **self._reader_options(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=_METADATA_MAX_AGE_MS,
        )
        try:
            async with _bounded(self.settings.request_timeout, f"follow {', '.join(topics)}"):
                await reader.start()
            assigned: set[Any] = set()
            refresh_at = 0.0
            while True:
                if time.monotonic() >= refresh_at:
                    counts = await partition_counts(self.settings, topics)
                    found = {
                        TopicPartition(topic, partition)
                        for topic, count in counts.items()
                        for partition in range(count)
                    }
                    if found != assigned:
                        reader.assign(list(found))
                        await reader.seek_to_beginning(*found)
                        assigned = found
                    refresh_at = time.monotonic() + _METADATA_MAX_AGE_MS / 1000
                if not assigned:
                    await asyncio.sleep(1.0)
                    continue
                try:
                    batches = await reader.getmany(timeout_ms=1000)
                except KafkaError as err:
                    raise TransportError(f"follow: {_describe(err)}") from err
                records = [_record(m) for messages in batches.values() for m in messages]
                if records:
                    yield records
        finally:
            await reader.stop()

    async def _check_copartitioned(self) -> None:
        """Refuse topics that must be co-partitioned and are not (when they exist)."""
        if len(self.copartitioned) < 2 or self._admin is None:
            return
        async with _bounded(self.settings.request_timeout, "describe topics"):
            existing = await _existing_topics(self._admin)
        self._fatal = _copartitioning_problem(
            {t: existing[t] for t in self.copartitioned if t in existing}
        )
        if self._fatal is not None:
            raise self._fatal

    async def _on_revoked(self, revoked: list[Any]) -> None:
        partitions = frozenset((tp.topic, tp.partition) for tp in revoked)
        if self._before_revoke is not None and partitions:
            try:
                await self._before_revoke(partitions)
            except Exception:  # noqa: BLE001 - a failed hand-over must not break the rebalance
                _log.exception("handing over partitions failed; their new owner re-reads them")
        # Positions in _fetched are kept: resumed for partitions we get back (_on_assigned).
        self._catch_up = {}

    async def _on_assigned(self, assigned: list[Any]) -> None:
        now_owned = frozenset((tp.topic, tp.partition) for tp in assigned)
        _log.info("assigned partitions %s", sorted(f"{t}/{p}" for t, p in now_owned))
        lost = self._owned - now_owned
        gained = now_owned - self._owned
        self._owned = now_owned
        self._set_aside.clear()  # a new assignment is not paused: they are tried again
        if self._merge is not None:
            self._merge.drop()  # kept partitions are sought back to what was handed out
        self._failures = {tp: n for tp, n in self._failures.items() if tp in assigned}
        for key in lost:
            self._fetched.pop(key, None)
            self._committed.pop(key, None)
            self._short_since.pop(key, None)
        consumer = self._consumer
        for tp in assigned:
            key = (tp.topic, tp.partition)
            position = self._fetched.get(key)
            if key in gained:
                self._fetched.pop(key, None)
                self._committed.pop(key, None)
            elif position is not None and consumer is not None:
                consumer.seek(tp, position)
        self._check_assignment_copartitioned()
        await self._read_handled(gained)
        if self._after_assign is not None:
            ends: dict[TopicPartitionKey, int] = dict.fromkeys(gained, -1)
            if gained and consumer is not None:
                try:
                    answer = await consumer.end_offsets([TopicPartition(*k) for k in gained])
                    ends.update({(tp.topic, tp.partition): end for tp, end in answer.items()})
                except KafkaError as err:
                    _log.warning("cannot read end offsets: %s", _describe(err))
            await self._after_assign(lost, ends)
        await self._catch_up_first(assigned)

    async def _read_handled(self, gained: frozenset[TopicPartitionKey]) -> None:
        """Learn how far the group handled each gained partition, from the commit's metadata.

        Kept partitions whose commit the group no longer has are noted as forgotten.
        """
        self._handled = {}
        kept = [key for key in self._owned - gained if key in self._committed]
        if not (gained or kept) or self._admin is None:
            return
        tps = [TopicPartition(*key) for key in (*gained, *kept)]
        try:
            async with _bounded(self.settings.request_timeout, "read committed offsets"):
                committed = await self._admin.list_consumer_group_offsets(
                    self.group_id, partitions=tps
                )
        except TransportError as err:
            _log.warning(
                "cannot read how far partitions were handled (%s): invalid records re-read"
                " to rebuild deployments may be dead-lettered again",
                err,
            )
            return
        for key in kept:
            answer = committed.get(TopicPartition(*key))
            if answer is None or answer.offset < 0:
                self._forgotten.add(key)
        if self._forgotten:
            _log.warning(
                "group %r no longer has the offsets it committed on %s: the broker lost its"
                " state (restarted without its data?)",
                self.group_id,
                ", ".join(sorted(f"{t}/{p}" for t, p in self._forgotten)),
            )
        for tp, offset_and_metadata in committed.items():
            if (tp.topic, tp.partition) not in gained:
                continue
            match = _HANDLED.fullmatch(offset_and_metadata.metadata or "")
            if match is not None and int(match[1]) > offset_and_metadata.offset >= 0:
                self._handled[tp.topic, tp.partition] = int(match[1])

    def handled(self) -> dict[TopicPartitionKey, int]:
        """Per partition gained at the last assignment, the position the group handled it to.

        Records between the committed offset and that position are read again only to
        rebuild open deployments: their verdicts and dead letters are already published.
        """
        return dict(self._handled)

    def _check_assignment_copartitioned(self) -> None:
        consumer = self._consumer
        if len(self.copartitioned) < 2 or consumer is None:
            return
        counts: dict[str, int] = {}
        for topic in self.copartitioned:
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                counts[topic] = len(partitions)
        self._fatal = self._fatal or _copartitioning_problem(counts)
        numbers = [{p for t, p in self._owned if t == topic} for topic in self.copartitioned]
        if len(counts) == len(self.copartitioned) and any(n != numbers[0] for n in numbers):
            _log.error(
                "this member owns different partition numbers of %s (%s): another member of"
                " group %r assigns partitions without the range assignor",
                ", ".join(self.copartitioned),
                "; ".join(str(sorted(n)) for n in numbers),
                self.group_id,
            )

    async def _catch_up_first(self, assigned: list[Any]) -> None:
        """Pause all but the ``first`` topics until those are read to their current end."""
        first = [tp for tp in assigned if tp.topic in self.first]
        if not first or self._consumer is None:
            return
        try:
            ends = await self._consumer.end_offsets(first)
        except KafkaError as err:
            _log.warning(
                "cannot read end offsets (%s); not reading %s first", _describe(err), self.first
            )
            return
        self._catch_up = {tp: end for tp, end in ends.items() if end > 0}
        others = [tp for tp in assigned if tp.topic not in self.first]
        if self._catch_up and others:
            self._consumer.pause(*others)
            _log.info(
                "reading %s to its end before the other topics", ", ".join(sorted(self.first))
            )

    async def _check_caught_up(self) -> None:
        consumer = self._consumer
        for tp, end in list(self._catch_up.items()):
            # The fetch's high watermark: some brokers' ListOffsets answer short (tansu).
            if await consumer.position(tp) >= max(end, consumer.highwater(tp) or 0):
                del self._catch_up[tp]
        if not self._catch_up and consumer.paused():
            consumer.resume(*(consumer.paused() - self._set_aside.keys()))
            _log.info("caught up on %s; reading every topic", ", ".join(sorted(self.first)))


def _pace_failed_metadata_updates(client: Any, pause: float = _METADATA_RETRY_PAUSE) -> None:
    """Make a failed metadata update of ``client`` answer its waiters only after ``pause``.

    aiokafka's fetcher asks for a metadata update whenever a partition has no known leader
    and waits for it with no backoff; with every broker refusing connections the update
    fails at once, so it spins (thousands of attempts a second, two log lines each, a
    core busy) until a broker is back. Waiting here paces every caller of the update.
    """
    update = client._metadata_update  # noqa: SLF001 - aiokafka has no option for this

    async def paced(cluster: Any, topics: Any) -> bool:
        ok = bool(await update(cluster, topics))
        if not ok:
            await asyncio.sleep(pause)
        return ok

    client._metadata_update = paced  # noqa: SLF001


_HANDLED = re.compile(r"coalmine handled=(\d+)")
"""The metadata committed beside an offset: the position records were handled up to."""


def _with_metadata(offsets: Mapping[Any, tuple[int, int]]) -> dict[Any, tuple[int, str]]:
    """``{tp: (offset, handled)}`` as aiokafka commits it: the handled position as metadata."""
    return {
        tp: (offset, f"coalmine handled={handled}") for tp, (offset, handled) in offsets.items()
    }


def _undecodable(error: Exception) -> bool:
    """Whether a fetch failed unpacking a record batch rather than talking to the broker.

    aiokafka raises what decompression or parsing raised as is: only its network and
    protocol errors are ``KafkaError``.
    """
    if isinstance(error, KafkaError):
        return isinstance(error, UnsupportedCodecError | CorruptRecordException)
    return True


def _copartitioning_problem(counts: Mapping[str, int]) -> PartitioningError | None:
    if len(set(counts.values())) <= 1:
        return None
    listed = ", ".join(f"{topic} has {count}" for topic, count in counts.items())
    return PartitioningError(
        f"topics must have the same partition count (keyed by service, a service's deploy"
        f" events and metrics must share a partition number): {listed} partitions;"
        " recreate one of them or repartition"
    )


def _record(message: Any) -> Record:
    value, headers = message.value, message.headers
    return make_record(
        message.topic,
        value if value is not None else b"",
        message.key,
        tuple([(name, data or b"") for name, data in headers]) if headers else (),
        message.partition,
        message.offset,
        message.timestamp,
    )
