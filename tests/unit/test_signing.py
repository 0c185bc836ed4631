"""Webhook signatures verify with off-the-shelf receivers' libraries (SPEC §5).

Each check is made by the libraries a customer would use, ``standardwebhooks`` (its
``Webhook.verify`` reads ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``)
and Stripe's SDK (``WebhookSignature.verify_header`` on ``X-Reminders-Signature``), with
the secret exactly as the customer was shown it, so the headers cannot drift from what
they accept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time

import pytest
import stripe
from standardwebhooks import Webhook, WebhookVerificationError

from shared.delivery.signing import ENDPOINT_SECRET_PREFIX, new_endpoint_secret, signature_headers

MESSAGE_ID = "5f0c1b9e-3a4d-5e6f-8a9b-0c1d2e3f4a5b"
BODY = b'{"type":"reminder","message_id":"5f0c1b9e-3a4d-5e6f-8a9b-0c1d2e3f4a5b","title":"pay rent"}'
DEPLOYMENT_SECRET = "test-signing-secret"  # REMINDERS_WEBHOOK_SECRET: any string


def headers_now(secrets: list[str], body: bytes = BODY) -> dict[str, str]:
    return signature_headers(MESSAGE_ID, int(time.time()), body, secrets)


def standard_webhooks_verifies(secret: str | bytes, body: bytes, headers: dict[str, str]) -> bool:
    try:
        payload = Webhook(secret).verify(body, headers)
    except WebhookVerificationError:
        return False
    assert payload == json.loads(body)
    return True


def stripe_verifies(secret: str, body: bytes, headers: dict[str, str]) -> bool:
    try:
        return bool(
            stripe.WebhookSignature.verify_header(
                body.decode(), headers["X-Reminders-Signature"], secret, tolerance=300
            )
        )
    except stripe.SignatureVerificationError:
        return False


def both_verify(secret: str, body: bytes, headers: dict[str, str]) -> bool:
    return standard_webhooks_verifies(secret, body, headers) and stripe_verifies(
        secret, body, headers
    )


def neither_verifies(secret: str, body: bytes, headers: dict[str, str]) -> bool:
    return not standard_webhooks_verifies(secret, body, headers) and not stripe_verifies(
        secret, body, headers
    )


def test_a_new_endpoint_secret_is_whsec_and_32_random_bytes_in_standard_base64() -> None:
    secret = new_endpoint_secret()

    assert secret.startswith(ENDPOINT_SECRET_PREFIX)
    key = base64.b64decode(secret.removeprefix(ENDPOINT_SECRET_PREFIX), validate=True)
    assert len(key) == 32
    assert new_endpoint_secret() != secret


def test_the_headers_follow_the_documented_formulas() -> None:
    """Pins the exact bytes signed, so a change of format shows here and not at a customer."""
    key = b"k" * 32
    secret = ENDPOINT_SECRET_PREFIX + base64.b64encode(key).decode()

    headers = signature_headers(MESSAGE_ID, 1_900_000_000, BODY, [secret])

    standard = hmac.new(key, f"{MESSAGE_ID}.1900000000.".encode() + BODY, hashlib.sha256)
    stripe_scheme = hmac.new(secret.encode(), b"1900000000." + BODY, hashlib.sha256)
    assert headers == {
        "webhook-id": MESSAGE_ID,
        "webhook-timestamp": "1900000000",
        "webhook-signature": "v1," + base64.b64encode(standard.digest()).decode(),
        "X-Reminders-Signature": f"t=1900000000,v1={stripe_scheme.hexdigest()}",
    }


def test_both_libraries_verify_an_endpoint_secret_as_shown() -> None:
    secret = new_endpoint_secret()

    headers = headers_now([secret])

    assert both_verify(secret, BODY, headers)
    assert neither_verifies(new_endpoint_secret(), BODY, headers)


def test_during_a_rotation_either_secret_alone_verifies_both_headers() -> None:
    old, new = new_endpoint_secret(), new_endpoint_secret()

    headers = headers_now([new, old])

    assert len(headers["webhook-signature"].split(" ")) == 2
    assert headers["X-Reminders-Signature"].count("v1=") == 2
    assert both_verify(new, BODY, headers)
    assert both_verify(old, BODY, headers)
    assert neither_verifies(new_endpoint_secret(), BODY, headers)


def test_after_the_rotation_the_old_secret_fails_both_libraries() -> None:
    old, new = new_endpoint_secret(), new_endpoint_secret()

    headers = headers_now([new])

    assert both_verify(new, BODY, headers)
    assert neither_verifies(old, BODY, headers)


def test_a_tampered_body_fails_both_libraries() -> None:
    secret = new_endpoint_secret()
    headers = headers_now([secret])

    tampered = BODY.replace(b"pay rent", b"pay Mallory")

    assert neither_verifies(secret, tampered, headers)


def test_a_changed_timestamp_fails_both_libraries() -> None:
    """A replay cannot refresh the time: it is inside both signatures."""
    secret = new_endpoint_secret()
    headers = headers_now([secret])
    later = str(int(headers["webhook-timestamp"]) + 60)

    replayed = {
        **headers,
        "webhook-timestamp": later,
        "X-Reminders-Signature": headers["X-Reminders-Signature"].replace(
            f"t={headers['webhook-timestamp']}", f"t={later}"
        ),
    }

    assert neither_verifies(secret, BODY, replayed)


def test_a_signature_made_long_ago_fails_both_libraries() -> None:
    """Both reject a timestamp over 5 minutes old (standardwebhooks' fixed tolerance,
    Stripe's ``tolerance=300``), however well signed."""
    secret = new_endpoint_secret()

    headers = signature_headers(MESSAGE_ID, int(time.time()) - 600, BODY, [secret])

    assert neither_verifies(secret, BODY, headers)


def test_an_unpadded_endpoint_secret_keys_what_the_library_decodes() -> None:
    """standardwebhooks accepts ``whsec_`` base64 without its ``=`` padding: so do we."""
    padded = new_endpoint_secret()
    unpadded = padded.rstrip("=")
    assert unpadded != padded  # 32 bytes always end in one "="

    headers = headers_now([unpadded])

    assert both_verify(unpadded, BODY, headers)
    assert standard_webhooks_verifies(padded, BODY, headers)  # the same key


def test_a_plain_deployment_secret_verifies_as_is_with_stripe_and_as_bytes_with_standard() -> None:
    """A secret that is not ``whsec_<base64>`` keys both schemes with its UTF-8 bytes.

    standardwebhooks base64-decodes a ``str`` secret, so the receiver hands it the bytes
    (used as the key unchanged), or the ``whsec_`` form of their base64.
    """
    headers = headers_now([DEPLOYMENT_SECRET])

    assert stripe_verifies(DEPLOYMENT_SECRET, BODY, headers)
    assert standard_webhooks_verifies(DEPLOYMENT_SECRET.encode(), BODY, headers)
    as_whsec = "whsec_" + base64.b64encode(DEPLOYMENT_SECRET.encode()).decode()
    assert standard_webhooks_verifies(as_whsec, BODY, headers)
    # What does not work: the plain string (decoded as base64: here not even decodable) ...
    with pytest.raises(binascii.Error):
        Webhook(DEPLOYMENT_SECRET)
    assert not standard_webhooks_verifies("plain secret", BODY, headers_now(["plain secret"]))
    # ... and the base64 as bytes, which the library takes as the key itself.
    assert not standard_webhooks_verifies(
        base64.b64encode(DEPLOYMENT_SECRET.encode()), BODY, headers
    )


def test_a_whsec_secret_that_is_not_base64_is_a_plain_secret() -> None:
    secret = "whsec_not base64!"

    headers = headers_now([secret])

    assert stripe_verifies(secret, BODY, headers)
    assert standard_webhooks_verifies(secret.encode(), BODY, headers)


@pytest.mark.parametrize("secrets", [[], [""], [new_endpoint_secret(), ""]])
def test_there_is_no_signing_without_a_secret(secrets: list[str]) -> None:
    with pytest.raises(ValueError, match="non-empty secret"):
        signature_headers(MESSAGE_ID, int(time.time()), BODY, secrets)
