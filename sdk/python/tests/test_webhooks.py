"""The webhook signature helper, against signatures made as the server makes them."""

import hashlib
import hmac
import json

import pytest

from billing_client.webhooks import WebhookSignatureError, compute_signature, verify_signature

SECRET = "whsec_test"  # noqa: S105 -- a test secret
BODY = json.dumps({"id": "evt_1", "type": "wallet.low_balance", "customer": "acme", "data": {}})


def header(timestamp: int, body: str = BODY, secret: str = SECRET) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def test_a_signature_made_with_the_secret_verifies_and_returns_the_event():
    event = verify_signature(BODY.encode(), header(1_700_000_000), SECRET, now=1_700_000_010)

    assert event["id"] == "evt_1"
    assert compute_signature(BODY, SECRET, 1_700_000_000) == header(1_700_000_000).split("v1=")[1]


@pytest.mark.parametrize(
    ("body", "signed", "secret", "now"),
    [
        (BODY.replace("acme", "evil"), header(1_700_000_000), SECRET, 1_700_000_000),  # body changed
        (BODY, header(1_700_000_000), "whsec_other", 1_700_000_000),  # another secret
        (BODY, header(1_700_000_000), SECRET, 1_700_000_301),  # older than the tolerance
        (BODY, "v1=abc", SECRET, 1_700_000_000),  # no timestamp
        (BODY, "t=1700000000", SECRET, 1_700_000_000),  # no signature
        (BODY, "t=soon,v1=abc", SECRET, 1_700_000_000),
    ],
)
def test_anything_else_is_refused(body, signed, secret, now):
    with pytest.raises(WebhookSignatureError):
        verify_signature(body, signed, secret, now=now)


def test_one_matching_signature_of_several_is_enough():
    signed = f"t=1700000000,v1={'0' * 64},{header(1_700_000_000).split(',')[1]}"

    assert verify_signature(BODY, signed, SECRET, now=1_700_000_000)["type"] == "wallet.low_balance"
