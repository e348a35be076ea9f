"""The API's resources on the synchronous ``Client``: ``client.customers``, ``client.events``, ...

Each method builds its request in ``_requests`` and sends it through the client; ``_async_resources``
mirrors these one for one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from billing_client import _requests as requests
from billing_client.errors import refused_event_error
from billing_client.pagination import Page
from billing_client.types import (
    CreditGrant,
    Customer,
    EventParams,
    EventResult,
    Reservation,
    ReservationCommit,
    UsageCorrection,
    UsageSummary,
    WalletTopUp,
)

if TYPE_CHECKING:
    from billing_client.client import Client


class _Resource:
    def __init__(self, client: Client) -> None:
        self._client = client


class Customers(_Resource):
    def create(
        self,
        *,
        external_id: str,
        name: str,
        email: str | None = None,
        plan: str | None = None,
        currency: str | None = None,
        idempotency_key: str | None = None,
    ) -> Customer:
        """Create a customer, subscribed to ``plan``'s latest published version when given."""
        request = requests.customer_create(
            external_id=external_id,
            name=name,
            email=email,
            plan=plan,
            currency=currency,
            idempotency_key=idempotency_key,
        )
        return cast(Customer, self._client._request(request))

    def retrieve(self, external_id: str) -> Customer:
        return cast(Customer, self._client._request(requests.customer_retrieve(external_id)))

    def list(self, *, limit: int | None = None, starting_after: str | None = None) -> Page[Customer]:
        """One page of customers; ``.auto_paging_iter()`` walks them all."""
        body = self._client._request(requests.customer_list(limit=limit, starting_after=starting_after))
        return Page(body, lambda cursor: self.list(limit=limit, starting_after=cursor))

    def usage(self, external_id: str, *, period: str | None = None) -> UsageSummary:
        """The numbers of the customer's usage page: this period, or the one starting ``period``."""
        return cast(UsageSummary, self._client._request(requests.customer_usage(external_id, period=period)))


class Events(_Resource):
    def create(
        self,
        *,
        customer: str,
        meter: str,
        quantity: Any = 1,
        idempotency_key: str | None = None,
        timestamp: datetime | str | None = None,
        user: str | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> EventResult:
        """Record one usage event; ``status`` is ``accepted``, ``duplicate`` or ``buffered``.

        A refusal (a hard limit, a cap, no balance, a frozen account) raises its ``UsageRefused``: the
        event was not recorded and may be sent again, with the same key, once the customer can pay.
        """
        event = requests.event_body(
            customer=customer,
            meter=meter,
            quantity=quantity,
            idempotency_key=idempotency_key,
            timestamp=timestamp,
            user=user,
            properties=properties,
        )
        (result,) = self._client._send_events([event])
        if result["status"] == "refused":
            raise refused_event_error(result)
        return result

    def create_batch(
        self, events: Sequence[EventParams], *, idempotency_key: str | None = None
    ) -> list[EventResult]:
        """Record up to 1,000 events; one result each, in order, refusals included (nothing raised for them)."""
        bodies = requests.event_bodies(cast(Sequence[Mapping[str, Any]], events))
        return self._client._send_events(
            bodies, idempotency_key=idempotency_key or requests.new_idempotency_key()
        )

    def correct(
        self, event_id: int, *, quantity: Any, reason: str, idempotency_key: str | None = None
    ) -> UsageCorrection:
        """Correct a recorded event to ``quantity`` units in all (not the difference), for ``reason``.

        A new event for the difference is recorded, pointing at ``event_id``, and the period is re-rated.
        Only the current billing period can be corrected: an ended one raises ``PeriodClosed``. Sent again
        with the same ``idempotency_key`` it answers the first correction and writes nothing.
        """
        request = requests.event_correct(
            event_id=event_id, quantity=quantity, reason=reason, idempotency_key=idempotency_key
        )
        return cast(UsageCorrection, self._client._request(request))

    def preview_correction(
        self, event_id: int, *, quantity: Any, reason: str, idempotency_key: str | None = None
    ) -> UsageCorrection:
        """What ``correct`` would do, writing nothing: ``before`` and ``after`` are the period's charges.

        Pass the key you will correct with to see the correction under it; the preview does not use it up.
        """
        request = requests.event_correction_preview(
            event_id=event_id, quantity=quantity, reason=reason, idempotency_key=idempotency_key
        )
        return cast(UsageCorrection, self._client._request(request))


class Credits(_Resource):
    def grant(
        self,
        customer: str,
        *,
        amount: Any,
        kind: str | None = None,
        unit: str | None = None,
        expires_at: datetime | str | None = None,
        priority: int | None = None,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> CreditGrant:
        """Grant credits (``unit="credits"``) or a monetary credit (the customer's currency)."""
        request = requests.credit_grant(
            customer=customer,
            amount=amount,
            kind=kind,
            unit=unit,
            expires_at=expires_at,
            priority=priority,
            description=description,
            idempotency_key=idempotency_key,
        )
        return cast(CreditGrant, self._client._request(request))


class Wallet(_Resource):
    def top_up(
        self, customer: str, *, amount: Any, note: str | None = None, idempotency_key: str | None = None
    ) -> WalletTopUp:
        request = requests.wallet_top_up(
            customer=customer, amount=amount, note=note, idempotency_key=idempotency_key
        )
        return cast(WalletTopUp, self._client._request(request))


class Reservations(_Resource):
    """The reservation endpoints one by one; ``client.reserve(...)`` wraps them in a context manager."""

    def create(
        self,
        *,
        customer: str,
        meter: str,
        quantity: Any,
        user: str | None = None,
        properties: Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> Reservation:
        request = requests.reservation_create(
            customer=customer,
            meter=meter,
            quantity=quantity,
            user=user,
            properties=properties,
            ttl_seconds=ttl_seconds,
            idempotency_key=idempotency_key,
        )
        return cast(Reservation, self._client._request(request))

    def commit(
        self, reservation_id: str, *, quantity: Any, idempotency_key: str | None = None
    ) -> ReservationCommit:
        request = requests.reservation_commit(
            reservation_id=reservation_id, quantity=quantity, idempotency_key=idempotency_key
        )
        return cast(ReservationCommit, self._client._request(request))

    def release(self, reservation_id: str, *, idempotency_key: str | None = None) -> Reservation:
        request = requests.reservation_release(reservation_id=reservation_id, idempotency_key=idempotency_key)
        return cast(Reservation, self._client._request(request))
