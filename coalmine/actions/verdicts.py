"""A verdict as the actions read it: the ``Verdict`` object or its published JSON object."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from coalmine.contract import Verdict, encode_verdict

VerdictLike = Verdict | Mapping[str, Any]
"""A verdict, or the JSON object ``encode_verdict`` publishes for it (decoded)."""


def verdict_fields(verdict: VerdictLike) -> Mapping[str, Any]:
    """The verdict's fields as the wire contract names them."""
    return verdict.to_dict() if isinstance(verdict, Verdict) else verdict


def verdict_json(verdict: VerdictLike) -> bytes:
    """The verdict's JSON as published on the verdict topic."""
    if isinstance(verdict, Verdict):
        return encode_verdict(verdict)
    return orjson.dumps(verdict)
