"""Webhook signatures: HMAC-SHA256 over the timestamp and the body.

The signed bytes are ``f"{timestamp}.".encode() + body``; the header is
``Coalmine-Signature: t=<unix seconds>,v1=<hex digest>``. A receiver recomputes the digest
with the shared secret, compares it in constant time, and refuses timestamps further than
the tolerance from its clock, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr

SIGNATURE_HEADER = "Coalmine-Signature"
"""The header carrying ``t=<unix seconds>,v1=<hex>``."""

IDEMPOTENCY_HEADER = "Idempotency-Key"
"""The header carrying the verdict id: the same on every retry of one delivery."""

VERDICT_ID_HEADER = "Coalmine-Verdict-Id"
"""The header carrying the verdict id, for receivers that log it."""

DEFAULT_TOLERANCE = 300.0
"""Seconds a signature's timestamp may lie from the receiver's clock."""

Secret = SecretStr | str | bytes
"""An HMAC key, as configured or as the receiver holds it."""


def _key(secret: Secret) -> bytes:
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    return secret.encode() if isinstance(secret, str) else secret


def digest(body: bytes, secret: Secret, timestamp: int) -> str:
    """The hex HMAC-SHA256 of ``f"{timestamp}.".encode() + body``."""
    signed = f"{timestamp}.".encode() + body
    return hmac.new(_key(secret), signed, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: Secret, timestamp: int) -> str:
    """The ``Coalmine-Signature`` value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    return f"t={timestamp},v1={digest(body, secret, timestamp)}"


def signed_headers(body: bytes, secret: Secret, verdict_id: str, now: float) -> dict[str, str]:
    """The signature, idempotency and verdict-id headers of one webhook attempt."""
    return {
        SIGNATURE_HEADER: sign(body, secret, int(now)),
        IDEMPOTENCY_HEADER: verdict_id,
        VERDICT_ID_HEADER: verdict_id,
    }


def verify(
    header: str | None,
    body: bytes,
    secret: Secret,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at a time within ``tolerance`` of ``now``.

    False for a missing or malformed header (it needs exactly one ``t``, in digits), a
    timestamp further than ``tolerance`` seconds from ``now`` (either way), or no ``v1``
    digest matching (compared in constant time). Several ``v1`` entries are allowed: any
    one matching suffices.
    """
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            if timestamp is not None or not (value.isascii() and value.isdigit()):
                return False  # one timestamp, in digits
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance:
        return False
    expected = digest(body, secret, timestamp).encode()
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate.encode())
    return matched
