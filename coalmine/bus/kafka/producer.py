"""Publishing to Kafka, in transactions when ``transactional_id`` is set.

In a transaction, what is published between two commits is one Kafka transaction, and the
commit adds the consumer offsets to it: a ``read_committed`` reader sees a verdict only
once the input records that made it are committed too.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError, UnknownError, UnsupportedVersionError

from coalmine._exceptions import TransactionAbortedError, TransportError
from coalmine.bus.kafka import clients
from coalmine.bus.kafka.clients import bounded, describe, log
from coalmine.bus.kafka.commits import with_metadata

if TYPE_CHECKING:
    from collections.abc import Sequence

    from coalmine.bus.base import Outgoing
    from coalmine.bus.kafka.clients import Clients
    from coalmine.bus.kafka.positions import Positions
    from coalmine.config.models import KafkaSettings

__all__ = ["Producer"]


class Producer:
    """The transport's producer, and the transaction open since the last commit."""

    def __init__(
        self, settings: KafkaSettings, clients: Clients, positions: Positions, group_id: str
    ) -> None:
        self.settings = settings
        self._clients = clients
        self._positions = positions
        self._group_id = group_id
        self.in_transaction = False

    @property
    def transactional(self) -> bool:
        """Whether publishes and commits go through Kafka transactions."""
        return self.settings.transactional_id is not None

    async def start(self) -> None:
        """Start the producer; a broker that cannot give it a producer id is named as such."""
        settings = self.settings
        self._clients.producer = clients.producer(settings)
        try:
            async with bounded(settings.request_timeout, "cannot start the Kafka producer"):
                await self._clients.producer.start()
        except TransportError as err:
            cause = err.__cause__
            refused = isinstance(cause, (UnknownError, UnsupportedVersionError))
            if cause is None or not (settings.idempotent_producer and refused):
                raise
            fix = (
                ": transactions need a broker that has them; unset [kafka] transactional_id"
                " and set [kafka] idempotent_producer = false"
                if self.transactional
                else ": set [kafka] idempotent_producer = false"
            )
            msg = (
                f"the broker at {settings.bootstrap_servers} answers but refused a"
                f" producer id ({describe(cause)}): it has no idempotent producer"
                f" (InitProducerId; tansu, for one){fix}"
                " (COALMINE_KAFKA__IDEMPOTENT_PRODUCER=false)"
            )
            raise TransportError(msg) from err

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Send every message at once and return when the broker acknowledged them all.

        Raises:
            TransactionAbortedError: a message of a transaction was refused or not
                acknowledged; the transaction is aborted.
            TransportError: the same, outside transactions.
        """
        if self.transactional and not self.in_transaction:
            # Nothing is lost if this fails: the caller retries the same messages.
            async with bounded(self.settings.request_timeout, "begin a Kafka transaction"):
                await self._clients.producer.begin_transaction()
            self.in_transaction = True
        try:
            await self._send_all(messages)
        except TransportError as err:
            if self.in_transaction:
                await self.abort(str(err))
                raise TransactionAbortedError(str(err)) from err
            raise

    async def _send_all(self, messages: Sequence[Outgoing]) -> None:
        producer = self._clients.producer
        futures: list[Any] = []
        outcomes: list[Any] = []
        # aiokafka expires undelivered batches after request_timeout; this is the backstop.
        async with bounded(2 * self.settings.request_timeout + 1, "publish to Kafka"):
            try:
                for message in messages:  # a loop, so a failed send keeps the earlier futures
                    futures.append(  # noqa: PERF401 - see the loop's comment
                        await producer.send(
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
                f"publish to Kafka: {count} not acknowledged: {describe(failures[0])}"
            ) from failures[0]

    async def commit_transaction(self, offsets: dict[Any, tuple[int, int]]) -> None:
        """Add ``offsets`` to the open transaction (begun if none is) and commit it.

        Raises:
            TransactionAbortedError: the broker refused or did not answer, and the aborted
                transaction held published messages.
            TransportError: the same, for a transaction of offsets only (nothing is lost:
                they are committed with the next one).
        """
        producer = self._clients.producer
        published = self.in_transaction
        try:
            async with bounded(self.settings.request_timeout, "commit a Kafka transaction"):
                if not self.in_transaction:
                    await producer.begin_transaction()
                    self.in_transaction = True
                if offsets:
                    await producer.send_offsets_to_transaction(
                        with_metadata(offsets), self._group_id
                    )
                await producer.commit_transaction()
        except TransportError as err:
            await self.abort(str(err))
            if published:
                raise TransactionAbortedError(str(err)) from err
            raise
        self.in_transaction = False
        for tp, committed in offsets.items():
            self._positions.committed[tp.topic, tp.partition] = committed

    async def abort(self, why: str) -> None:
        """Abort the open transaction, best effort.

        A broker that does not answer aborts it itself when the transaction times out, or
        when this transactional id starts again.

        Positions fetched since the last commit are forgotten: the records behind them
        made what the transaction held, so they must be read again, never committed.
        """
        self.in_transaction = False
        self._positions.back_to_committed()
        try:
            async with bounded(self.settings.request_timeout, "abort a Kafka transaction"):
                await self._clients.producer.abort_transaction()
        except (TransportError, KafkaError) as err:
            log.debug("aborting the transaction (%s) failed: %s", why, describe(err))
