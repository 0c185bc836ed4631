"""Webhook signatures: the headers that let a receiver check a request came from us (SPEC §5).

Every webhook request, from the deployment channel or a user's endpoint, carries two
schemes over the same body and time, so a receiver verifies with an off-the-shelf library
and the secret exactly as it was shown:

- Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature:
  v1,<base64>``; the ``standardwebhooks`` and Svix libraries), keyed with the bytes a
  ``whsec_<base64>`` secret encodes;
- the Stripe scheme (``X-Reminders-Signature: t=<unix>,v1=<hex>``; Stripe's SDKs'
  ``WebhookSignature.verify_header``), keyed with the secret string as given.

While a rotated secret overlaps, each header holds one signature per secret (newest
first) and a receiver holding either secret accepts the request. A secret that is not a
valid ``whsec_<base64>`` (the deployment-wide ``REMINDERS_WEBHOOK_SECRET`` may be any
string) keys both schemes with its UTF-8 bytes. Stripe's SDK verifies with it as given.
``standardwebhooks.Webhook`` base64-decodes a ``str`` secret (after removing ``whsec_``,
silently dropping characters outside the alphabet), so ``Webhook(secret)`` with such a
secret fails or verifies against another key; a ``bytes`` secret is used as the key
unchanged, so the receiver passes ``Webhook(secret.encode())`` (or the equivalent ``str``
``"whsec_" + base64.b64encode(secret.encode()).decode()``; not the ``bytes`` that
``b64encode`` returns, which would be taken as the key itself).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from secrets import token_bytes

ENDPOINT_SECRET_PREFIX = "whsec_"
# Standard Webhooks asks for 24 to 64 random bytes; 32 is SHA-256's output (RFC 2104's floor).
ENDPOINT_SECRET_BYTES = 32


def new_endpoint_secret() -> str:
    """A fresh endpoint secret, ``whsec_`` and 32 random bytes in standard base64, the form
    Standard Webhooks and Svix issue (their libraries accept it unchanged)."""
    return ENDPOINT_SECRET_PREFIX + base64.b64encode(token_bytes(ENDPOINT_SECRET_BYTES)).decode()


def signature_headers(
    message_id: str, timestamp: int, body: bytes, secrets: Sequence[str]
) -> dict[str, str]:
    """The signature headers of one webhook request: ``webhook-id``, ``webhook-timestamp``,
    ``webhook-signature`` and ``X-Reminders-Signature``.

    ``message_id`` is the reminder's message ID (``webhook-id``, signed with the body);
    ``timestamp`` the attempt's Unix time in whole seconds; ``body`` the exact bytes sent;
    ``secrets`` the secrets that sign, newest first: one, or two while a rotation overlaps.
    Pure: the same arguments give the same headers.

    Raises:
        ValueError: no secret, or an empty one (it would sign with an empty key).
    """
    if not secrets or not all(secrets):
        raise ValueError("a webhook is signed with at least one non-empty secret")
    standard_content = f"{message_id}.{timestamp}.".encode() + body
    standard = " ".join(
        "v1," + base64.b64encode(_hmac(_standard_webhooks_key(secret), standard_content)).decode()
        for secret in secrets
    )
    stripe_content = f"{timestamp}.".encode() + body
    stripe = ",".join(
        [f"t={timestamp}"]
        + [f"v1={_hmac(secret.encode(), stripe_content).hex()}" for secret in secrets]
    )
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard,
        "X-Reminders-Signature": stripe,
    }


def _hmac(key: bytes, content: bytes) -> bytes:
    return hmac.new(key, content, hashlib.sha256).digest()


def _standard_webhooks_key(secret: str) -> bytes:
    """The ``webhook-signature`` key: the bytes after ``whsec_`` when they are base64 (padded
    or not, as the libraries accept), else the secret's UTF-8 bytes."""
    if secret.startswith(ENDPOINT_SECRET_PREFIX):
        encoded = secret.removeprefix(ENDPOINT_SECRET_PREFIX)
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except binascii.Error:
            key = b""
        if key:
            return key
    return secret.encode()
