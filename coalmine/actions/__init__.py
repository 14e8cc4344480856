"""Actions: what coalmine does itself when it publishes a verdict.

``matching`` (which actions a verdict triggers), ``payloads`` (what each sends),
``signing`` (webhook signatures), ``outgoing`` and ``github`` (the HTTP requests),
``attempts`` (an attempt's failures), ``delivery`` (one verdict to one action, with
retries), ``deliveries`` (the background queue), ``streaks`` (failure logging),
``flagd`` (the kill switch).
"""

from coalmine.actions.deliveries import Deliveries
from coalmine.actions.delivery import ActionOutcome, FlagTarget, Outcome, Sender
from coalmine.actions.flagd import FlagdError, switch_off
from coalmine.actions.matching import passes, triggered
from coalmine.actions.signing import sign, verify

__all__ = [
    "ActionOutcome",
    "Deliveries",
    "FlagTarget",
    "FlagdError",
    "Outcome",
    "Sender",
    "passes",
    "sign",
    "switch_off",
    "triggered",
    "verify",
]
