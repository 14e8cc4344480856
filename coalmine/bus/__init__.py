"""The message bus: the :class:`Transport` protocol and the in-memory transport.

The Kafka transport lives in :mod:`coalmine.bus.kafka`, imported on demand because it
pulls in aiokafka.
"""

from coalmine.bus.base import Headers, Outgoing, Record, Transport
from coalmine.bus.memory import MemoryBroker, MemoryTransport, partition_for

__all__ = [
    "Headers",
    "MemoryBroker",
    "MemoryTransport",
    "Outgoing",
    "Record",
    "Transport",
    "partition_for",
]
