"""The API's lists of one customer's rows, one cursor page at a time (``core.pagination``), and a
reservation by id.

Every list is scoped to its customer before anything else, so a cursor or filter naming another
customer's row finds nothing. Pages are newest first by id; the indexes on ``(customer, -id)`` (and
``(customer, meter, -id)`` for events of one meter) keep a page's cost independent of its depth.
"""

from dataclasses import dataclass
from datetime import datetime

from core.errors import NotFound
from core.pagination import CursorPage, cursor_page
from customers.models import Customer, Member, Notification, NotificationKind
from plans.models import Meter
from usage.models import CreditGrant, CreditLedgerEntry, Reservation, UsageEvent


@dataclass(frozen=True)
class EventFilters:
    meter: str | None = None  # a meter key
    user: str | None = None  # a member's external id
    since: datetime | None = None  # timestamps at or after
    until: datetime | None = None  # timestamps before


def usage_event_list(
    *, customer: Customer, filters: EventFilters, limit: int, starting_after: int | None = None
) -> CursorPage[UsageEvent]:
    """The customer's usage events, newest recorded first, that match ``filters``.

    A meter or user the customer has never used matches no event: the page is empty, not an error,
    as a filter that matches nothing is.
    """
    scope = UsageEvent.objects.filter(customer=customer)
    rows = scope.select_related("customer", "meter", "member")
    if filters.meter is not None:
        # The meter's id, not a join on its key, so the (customer, meter, -id) index serves the page.
        meter_id = Meter.objects.filter(key=filters.meter).values_list("pk", flat=True).first()
        rows = rows.filter(meter_id=meter_id) if meter_id is not None else rows.none()
    if filters.user is not None:
        member_id = (
            Member.objects.filter(customer=customer, external_id=filters.user)
            .values_list("pk", flat=True)
            .first()
        )
        rows = rows.filter(member_id=member_id) if member_id is not None else rows.none()
    if filters.since is not None:
        rows = rows.filter(timestamp__gte=filters.since)
    if filters.until is not None:
        rows = rows.filter(timestamp__lt=filters.until)
    return cursor_page(rows=rows, scope=scope, limit=limit, starting_after=starting_after)


def credit_grant_list(
    *, customer: Customer, limit: int, starting_after: int | None = None
) -> CursorPage[CreditGrant]:
    """The customer's credit grants, newest first, ended ones included (their ``remaining_at`` is 0)."""
    scope = CreditGrant.objects.filter(customer=customer)
    return cursor_page(rows=scope, scope=scope, limit=limit, starting_after=starting_after)


def credit_ledger_list(
    *, customer: Customer, limit: int, starting_after: int | None = None
) -> CursorPage[CreditLedgerEntry]:
    """The customer's credit ledger, newest entry first: every change to a grant or the wallet."""
    scope = CreditLedgerEntry.objects.filter(customer=customer)
    return cursor_page(rows=scope, scope=scope, limit=limit, starting_after=starting_after)


def reservation_by_id(*, reservation_id: str) -> Reservation:
    reservation = Reservation.objects.select_related("customer", "meter").filter(pk=reservation_id).first()
    if reservation is None:
        raise NotFound(f"No reservation {reservation_id}.")
    return reservation


def usage_corrections(*, customer: Customer, period_start: datetime) -> list[Notification]:
    """The corrections of a period's usage as the customer was told them, newest first.

    Read from the notifications each correction writes (``usage.corrections``): pages never read the raw
    usage ledger.
    """
    return list(
        Notification.objects.filter(
            customer=customer, period_start=period_start, kind=NotificationKind.USAGE_CORRECTED
        ).order_by("-created_at", "-id")
    )
