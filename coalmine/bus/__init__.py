"""The message bus: the :class:`Transport` protocol and the in-memory transport.

The Kafka and MQTT transports live in :mod:`coalmine.bus.kafka` and
:mod:`coalmine.bus.mqtt`, imported on demand because they pull in aiokafka and aiomqtt;
each also offers what the command-line tools read and publish with.
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
