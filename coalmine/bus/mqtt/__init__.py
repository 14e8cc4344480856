"""The MQTT transport (aiomqtt, MQTT v5), and the MQTT client the tools use.

Topics, under ``[mqtt] topic_prefix`` (``coalmine`` by default):

| topic | direction | payload |
|---|---|---|
| ``<prefix>/deployments/<service>`` | in, QoS 1 | a deploy event, as on Kafka |
| ``<prefix>/metrics/<service>`` | in, QoS 1 | metric event(s), as on Kafka |
| ``<prefix>/verdicts/<service>/<deployment_id>`` | out, QoS 1, retained | a verdict |
| ``<prefix>/dlq`` | out, QoS 1 | the original bytes; headers as MQTT v5 user properties |
| ``<prefix>/status/<client_id>`` | out, QoS 1, retained | ``online``; ``offline`` by will |

A topic level holds a name with ``%``, ``/``, ``+``, ``#`` and NUL percent-encoded
(``team/checkout`` is ``team%2Fcheckout``); a record's key is its topic's last level,
percent-decoded.

At-least-once: the transport connects with a stable client id, ``clean_start`` off and a
session expiry, so the broker keeps its subscriptions and the messages it could not
deliver while the daemon is away (Mosquitto: up to ``max_queued_messages``, 1000 unless
configured). Received QoS 1 messages are acknowledged (PUBACK) by :meth:`MqttTransport.commit`,
not on arrival: the broker redelivers every message fetched but not committed after a
reconnect, like an uncommitted Kafka offset. Publishes wait for the broker's PUBACK and fail
on a negative reason code (e.g. an ACL refusal).

MQTT orders messages per topic, not across topics: unlike on Kafka, the deployments topic
cannot be read to its end first. Several daemons on one broker each receive everything:
run one consuming daemon per broker (MQTT has no consumer groups; shared subscriptions
would split one service's events between daemons).

:class:`MqttTransport` keeps one :class:`~coalmine.bus.mqtt.connection.Connection` at a
time (``connection``: publishes acknowledged one by one); ``addresses`` maps the logical
topics to MQTT topics and back; ``client`` builds clients from ``[mqtt]`` (address,
credentials, TLS), :class:`MqttSession` among them.
"""

from coalmine.bus.mqtt.addresses import topic_level
from coalmine.bus.mqtt.client import MqttSession
from coalmine.bus.mqtt.transport import MqttTransport

__all__ = ["MqttSession", "MqttTransport", "topic_level"]
