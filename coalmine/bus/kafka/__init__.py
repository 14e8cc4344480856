"""The Kafka transport (aiokafka), topic helpers, and readers outside the consumer group.

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

:class:`KafkaTransport` is a small front over one part per concern, the way aiokafka's
consumer fronts its subscription state, fetcher and group coordinator:

- ``clients``: client options (security included) and building the clients;
- ``topics``: which topics exist, with how many partitions; creating them;
- ``positions``: where each owned partition stands (fetched, committed);
- ``fetcher``: fetching and handing out records (``merge``: unkeyed topics in time order);
- ``pauses``: partitions held back (the ``first`` topics read first; undecodable batches);
- ``truncation``: logs that end before what was read;
- ``group``: partition moves, how far the group handled what it gained, co-partitioning;
- ``producer``: publishing and transactions; ``commits``: committing positions;
- ``readiness``: whether the brokers answer and the topics exist;
- ``readers``: reading topics outside the group (the ledger, the API, the tools).
- ``history``: one service's metrics over an event-time window, read by time (a baseline
  from the past that the daemon did not keep in memory).
"""

from coalmine.bus.kafka.clients import kafka_client_options, to_record
from coalmine.bus.kafka.history import WindowRead, read_window
from coalmine.bus.kafka.readers import follow, read_partitions, read_topic
from coalmine.bus.kafka.topics import PartitioningError, ensure_topics, partition_counts
from coalmine.bus.kafka.transport import KafkaTransport

__all__ = [
    "KafkaTransport",
    "PartitioningError",
    "WindowRead",
    "ensure_topics",
    "follow",
    "kafka_client_options",
    "partition_counts",
    "read_partitions",
    "read_topic",
    "read_window",
    "to_record",
]
