"""Cursor pages of a listing, as Stripe pages its lists: newest first, ``limit`` rows after a known row.

A page is read with a keyset, never an offset: the rows after the cursor row by primary key, so a page
costs the same however deep it is, and rows written while a client pages through never shift the pages
it has not read yet. The primary key is the order because it is unique (a stable order) and every table
has it indexed; a listing filtered by customer needs an index on ``(customer, -id)`` to stay bounded.
"""

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.db.models import Model, QuerySet

from core.errors import InvalidInput

Row = TypeVar("Row", bound=Model)

DEFAULT_PAGE_LIMIT = 10
MAX_PAGE_LIMIT = 100


class InvalidCursor(InvalidInput):
    """``starting_after`` names no row of the list being paged (unknown, or another customer's)."""

    code = "invalid_cursor"


@dataclass(frozen=True)
class CursorPage(Generic[Row]):
    rows: list[Row]
    has_more: bool


def cursor_page(
    *,
    rows: "QuerySet[Row]",
    scope: "QuerySet[Row]",
    limit: int,
    starting_after: Any = None,
    cursor_field: str = "pk",
) -> CursorPage[Row]:
    """Up to ``limit`` of ``rows``, newest (highest primary key) first, after the row ``starting_after``.

    ``starting_after`` is the public id of a row (its ``cursor_field``) that must be in ``scope``: the
    unfiltered rows the caller may see (one customer's events, say), so a filter changed between pages
    still pages on, and an id of another customer's row is refused (``InvalidCursor``) rather than
    telling the caller it exists. ``rows`` is ``scope`` narrowed by the listing's filters.
    """
    if starting_after is not None:
        cursor = scope.filter(**{cursor_field: starting_after}).values_list("pk", flat=True).first()
        if cursor is None:
            raise InvalidCursor(
                f"starting_after {str(starting_after)[:120]!r} is not an id in this list.",
                param="starting_after",
            )
        rows = rows.filter(pk__lt=cursor)
    # One row past the page says whether another page follows, without a count.
    found = list(rows.order_by("-pk")[: limit + 1])
    return CursorPage(rows=found[:limit], has_more=len(found) > limit)
