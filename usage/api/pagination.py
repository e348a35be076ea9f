"""The query and the answer of every list endpoint, as Stripe pages its lists.

``?limit=`` (1 to 100, default 10) and ``?starting_after=<id of the last row seen>``; the answer is
``{"object": "list", "url", "has_more", "data": [...]}``, newest first. The page itself is read by
``core.pagination.cursor_page`` in the selectors.
"""

from typing import Any

from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from core.pagination import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, CursorPage
from usage.api.parsers import only_known_query_parameters

# Row ids are bigints; past that no row exists, and the database would refuse the number.
MAX_ROW_ID = 2**63 - 1


class ListQuery(serializers.Serializer):
    """``limit`` and ``starting_after`` of a list whose rows have integer ids."""

    limit = serializers.IntegerField(
        min_value=1,
        max_value=MAX_PAGE_LIMIT,
        default=DEFAULT_PAGE_LIMIT,
        help_text=f"How many rows, 1 to {MAX_PAGE_LIMIT}.",
    )
    starting_after = serializers.IntegerField(
        min_value=1,
        max_value=MAX_ROW_ID,
        required=False,
        help_text="The `id` of the last row of the page before: the page after it. "
        "An id not in this list is `400 invalid_cursor`.",
    )


def list_query(serializer_class: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    """The list's query parameters, validated; a bad or unknown one is a 400 naming it."""
    # As a plain dict: from a QueryDict, DRF would read an empty value (?limit=) as absent and use the default.
    query = serializer_class(data=request.query_params.dict())
    only_known_query_parameters(request, query.fields)
    query.is_valid(raise_exception=True)
    return dict(query.validated_data)


def list_response(
    output: type[serializers.Serializer], *, request: Request, page: CursorPage[Any], data: Any = None
) -> Response:
    """The page as ``output`` shapes it; ``data`` replaces the page's rows when the caller built richer items."""
    body = {
        "url": request.path,
        "has_more": page.has_more,
        "data": page.rows if data is None else data,
    }
    return Response(output(body).data)


class ListOutput(serializers.Serializer):
    """The envelope of a page; each list's subclass declares ``data``."""

    object = serializers.ChoiceField(choices=["list"], default="list")
    url = serializers.CharField(help_text="The path this list is read from.")
    has_more = serializers.BooleanField(
        help_text="Whether more rows follow: ask again with `starting_after` the last row's `id`."
    )
