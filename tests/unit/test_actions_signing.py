from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr

from coalmine.actions.signing import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    VERDICT_ID_HEADER,
    sign,
    signed_headers,
    verify,
)

SECRET = "whsec-0123456789abcdef"  # noqa: S105 - a test key
BODY = b'{"verdict_id":"checkout-v42/7","decision":"rollback"}'
NOW = 1_795_000_000


def test_the_scheme_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, SECRET, NOW) == f"t={NOW},v1={expected}"


def test_a_genuine_signature_verifies() -> None:
    header = sign(BODY, SECRET, NOW)
    assert verify(header, BODY, SECRET, NOW + 10)
    assert verify(header, BODY, SecretStr(SECRET), NOW)
    assert verify(header, BODY, SECRET.encode(), NOW)


def test_forged_changed_and_stale_are_rejected() -> None:
    header = sign(BODY, SECRET, NOW)
    assert not verify(sign(BODY, "another-secret-0123456", NOW), BODY, SECRET, NOW)
    assert not verify(header, BODY.replace(b"rollback", b"promote"), SECRET, NOW)
    assert not verify(header, BODY, SECRET, NOW + 301)  # a replay, later than the tolerance
    assert not verify(header, BODY, SECRET, NOW - 301)  # from too far in the future
    assert verify(header, BODY, SECRET, NOW + 301, tolerance=600)


def test_a_timestamp_moved_forward_breaks_the_signature() -> None:
    digest = sign(BODY, SECRET, NOW).split("v1=")[1]
    assert not verify(f"t={NOW + 200},v1={digest}", BODY, SECRET, NOW + 200)


def test_malformed_headers_are_rejected() -> None:
    digest = sign(BODY, SECRET, NOW).split("v1=")[1]
    twice = f"t={NOW},t={NOW + 1},v1={digest}"
    for header in (None, "", f"v1={digest}", f"t={NOW}", f"t=abc,v1={digest}", "garbage", twice):
        assert not verify(header, BODY, SECRET, NOW), header


def test_any_of_several_digests_may_match() -> None:
    good = sign(BODY, SECRET, NOW).split("v1=")[1]
    assert verify(f"t={NOW},v1={'0' * 64},v1={good}", BODY, SECRET, NOW)


def test_headers_carry_the_verdict_id_twice() -> None:
    headers = signed_headers(BODY, SECRET, "checkout-v42/7", NOW + 0.9)
    assert headers[IDEMPOTENCY_HEADER] == headers[VERDICT_ID_HEADER] == "checkout-v42/7"
    assert headers[SIGNATURE_HEADER].startswith(f"t={NOW},v1=")
    assert verify(headers[SIGNATURE_HEADER], BODY, SECRET, NOW)
