"""Each API call as an ``ApiRequest``: its path, body and idempotency key, for both clients to send.

Amounts and quantities go out as decimal strings, so no amount passes through a float. Every write gets
its idempotency key here, before the first attempt; where the body has its own ``idempotency_key``
(a single event, a reservation, a credit grant, a correction) the header carries the same key, as the
API requires.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

from billing_client._http import ApiRequest

API = "/api/v1"
# The API takes at most this many events in one request.
MAX_BATCH = 1000


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def decimal_string(value: Any, *, name: str) -> str:
    """A quantity or amount as the API's decimal string; a float is refused, as it holds most decimals inexactly."""
    if isinstance(value, bool | float):
        raise TypeError(
            f"{name} must be a Decimal, an int or a decimal string, not {type(value).__name__}: "
            "a float cannot hold most decimal amounts exactly."
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{name} must be a finite number, not {value}.")
        return format(value, "f")
    if isinstance(value, str):
        try:
            parsed = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{name} must be a decimal number, not {value!r}.") from None
        if not parsed.is_finite():
            raise ValueError(f"{name} must be a finite number, not {value!r}.")
        return value.strip()
    raise TypeError(f"{name} must be a Decimal, an int or a decimal string, not {type(value).__name__}.")


def timestamp_string(value: Any, *, name: str = "timestamp") -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware; a naive datetime's moment is ambiguous.")
        return value.isoformat()
    if isinstance(value, str):
        return value
    raise TypeError(f"{name} must be an aware datetime or an ISO 8601 string, not {type(value).__name__}.")


def _segment(value: str) -> str:
    return quote(value, safe="")


def _without_none(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


# --- customers ------------------------------------------------------------------------------------


def customer_create(
    *,
    external_id: str,
    name: str,
    email: str | None,
    plan: str | None,
    currency: str | None,
    idempotency_key: str | None,
) -> ApiRequest:
    return ApiRequest(
        "POST",
        f"{API}/customers",
        body=_without_none(external_id=external_id, name=name, email=email, plan=plan, currency=currency),
        idempotency_key=idempotency_key or new_idempotency_key(),
    )


def customer_retrieve(external_id: str) -> ApiRequest:
    return ApiRequest("GET", f"{API}/customers/{_segment(external_id)}")


def customer_list(*, limit: int | None, starting_after: str | None) -> ApiRequest:
    query: dict[str, str] = {}
    if limit is not None:
        query["limit"] = str(limit)
    if starting_after is not None:
        query["starting_after"] = starting_after
    return ApiRequest("GET", f"{API}/customers", query=query)


def customer_usage(external_id: str, *, period: str | None) -> ApiRequest:
    return ApiRequest(
        "GET",
        f"{API}/customers/{_segment(external_id)}/usage",
        query={"period": period} if period is not None else {},
    )


def credit_grant(
    *,
    customer: str,
    amount: Any,
    kind: str | None,
    unit: str | None,
    expires_at: datetime | str | None,
    priority: int | None,
    description: str | None,
    idempotency_key: str | None,
) -> ApiRequest:
    key = idempotency_key or new_idempotency_key()
    body = _without_none(
        amount=decimal_string(amount, name="amount"),
        kind=kind,
        unit=unit,
        expires_at=timestamp_string(expires_at, name="expires_at") if expires_at is not None else None,
        priority=priority,
        description=description,
        idempotency_key=key,
    )
    return ApiRequest("POST", f"{API}/customers/{_segment(customer)}/credits", body=body, idempotency_key=key)


def wallet_top_up(*, customer: str, amount: Any, note: str | None, idempotency_key: str | None) -> ApiRequest:
    return ApiRequest(
        "POST",
        f"{API}/customers/{_segment(customer)}/wallet/top-ups",
        body=_without_none(amount=decimal_string(amount, name="amount"), note=note),
        idempotency_key=idempotency_key or new_idempotency_key(),
    )


# --- events ---------------------------------------------------------------------------------------


def event_body(
    *,
    customer: str,
    meter: str,
    quantity: Any = 1,
    idempotency_key: str | None = None,
    timestamp: datetime | str | None = None,
    user: str | None = None,
    properties: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One event as sent, complete: it is resent byte for byte after a failure, even days later.

    The moment is taken now when not given, so an event delivered late from the buffer is recorded when
    it happened, and its resend is the same event (an event sent without a timestamp would take the
    moment of whichever attempt arrives).
    """
    return _without_none(
        idempotency_key=idempotency_key or new_idempotency_key(),
        customer=customer,
        meter=meter,
        quantity=decimal_string(quantity, name="quantity"),
        timestamp=timestamp_string(timestamp if timestamp is not None else datetime.now(UTC)),
        user=user,
        properties=dict(properties) if properties is not None else None,
    )


def event_bodies(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if not events:
        raise ValueError("A batch needs at least one event.")
    if len(events) > MAX_BATCH:
        raise ValueError(f"A batch holds at most {MAX_BATCH} events; this one has {len(events)}.")
    return [event_body(**dict(event)) for event in events]


def events_send(events: Sequence[dict[str, Any]], *, idempotency_key: str | None = None) -> ApiRequest:
    """A single event is sent as itself, under its own key; several as a batch."""
    if len(events) == 1 and idempotency_key is None:
        return ApiRequest(
            "POST", f"{API}/events", body=events[0], idempotency_key=events[0]["idempotency_key"]
        )
    return ApiRequest("POST", f"{API}/events", body={"events": list(events)}, idempotency_key=idempotency_key)


def _correction(*, event_id: int, quantity: Any, reason: str, key: str) -> tuple[str, dict[str, Any]]:
    return (
        f"{API}/events/{_segment(str(event_id))}/corrections",
        {"quantity": decimal_string(quantity, name="quantity"), "reason": reason, "idempotency_key": key},
    )


def event_correct(*, event_id: int, quantity: Any, reason: str, idempotency_key: str | None) -> ApiRequest:
    key = idempotency_key or new_idempotency_key()
    path, body = _correction(event_id=event_id, quantity=quantity, reason=reason, key=key)
    return ApiRequest("POST", path, body=body, idempotency_key=key)


def event_correction_preview(
    *, event_id: int, quantity: Any, reason: str, idempotency_key: str | None
) -> ApiRequest:
    """A dry run: the body names its key, as the API requires, but no ``Idempotency-Key`` header is sent.

    The header would store the preview's answer under the key (for ``?dry_run=true``), and the correction
    then made with the same key would be refused as another request. A preview writes nothing, so it is
    safe to send again without one.
    """
    path, body = _correction(
        event_id=event_id, quantity=quantity, reason=reason, key=idempotency_key or new_idempotency_key()
    )
    return ApiRequest("POST", path, body=body, query={"dry_run": "true"})


# --- asking before the work -----------------------------------------------------------------------


def _question(
    *, customer: str, meter: str, quantity: Any, properties: Mapping[str, Any] | None
) -> dict[str, Any]:
    return _without_none(
        customer=customer,
        meter=meter,
        quantity=decimal_string(quantity, name="quantity"),
        properties=dict(properties) if properties is not None else None,
    )


def check(*, customer: str, meter: str, quantity: Any, properties: Mapping[str, Any] | None) -> ApiRequest:
    body = _question(customer=customer, meter=meter, quantity=quantity, properties=properties)
    return ApiRequest("POST", f"{API}/check", body=body)


def estimate(*, customer: str, meter: str, quantity: Any, properties: Mapping[str, Any] | None) -> ApiRequest:
    body = _question(customer=customer, meter=meter, quantity=quantity, properties=properties)
    return ApiRequest("POST", f"{API}/estimate", body=body)


# --- reservations ---------------------------------------------------------------------------------


def reservation_create(
    *,
    customer: str,
    meter: str,
    quantity: Any,
    user: str | None,
    properties: Mapping[str, Any] | None,
    ttl_seconds: int | None,
    idempotency_key: str | None,
) -> ApiRequest:
    key = idempotency_key or new_idempotency_key()
    body = {
        **_question(customer=customer, meter=meter, quantity=quantity, properties=properties),
        **_without_none(user=user, ttl_seconds=ttl_seconds),
        "idempotency_key": key,
    }
    return ApiRequest("POST", f"{API}/reservations", body=body, idempotency_key=key)


def reservation_commit(*, reservation_id: str, quantity: Any, idempotency_key: str | None) -> ApiRequest:
    return ApiRequest(
        "POST",
        f"{API}/reservations/{_segment(reservation_id)}/commit",
        body={"quantity": decimal_string(quantity, name="quantity")},
        idempotency_key=idempotency_key or new_idempotency_key(),
    )


def reservation_release(*, reservation_id: str, idempotency_key: str | None) -> ApiRequest:
    return ApiRequest(
        "POST",
        f"{API}/reservations/{_segment(reservation_id)}/release",
        idempotency_key=idempotency_key or new_idempotency_key(),
    )
