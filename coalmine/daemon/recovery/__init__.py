"""What lets a daemon restart, or take partitions over, and judge as if it never stopped.

On Kafka the log is the only state. A daemon commits no further than the floors
(``floors``: the oldest record an open deployment, or a held metric, still needs), learns
the verdicts already published (``ledger``) before it rebuilds open deployments from the
log, and holds metrics read before their deployment's ``started`` (``unrouted``). Pure, no
I/O: the router keeps them up to date; the daemon commits and reads the log.
"""

from coalmine.daemon.recovery.floors import RecoveryFloors, TopicPartition
from coalmine.daemon.recovery.ledger import VerdictLedger
from coalmine.daemon.recovery.unrouted import UnroutedEvent, UnroutedMetrics

__all__ = ["RecoveryFloors", "TopicPartition", "UnroutedEvent", "UnroutedMetrics", "VerdictLedger"]
