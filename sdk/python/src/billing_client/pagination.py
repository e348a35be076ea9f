"""Cursor pages of a list endpoint: ``{"object": "list", "data": [...], "has_more": bool}``.

As with Stripe, iterating a page gives its own items only; ``auto_paging_iter()`` walks every page,
asking for the next with ``starting_after`` set to the last item's ``id`` (or its ``external_id``, for
objects that have no other id).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar, cast

Item = TypeVar("Item", bound=Mapping[str, Any])


def cursor_of(item: Mapping[str, Any]) -> str:
    for name in ("id", "external_id"):
        value = item.get(name)
        if value is not None:
            return str(value)
    raise ValueError("A list item without an id or external_id cannot be paged past.")


class _PageData(Generic[Item]):
    def __init__(self, body: Mapping[str, Any]) -> None:
        self.data: list[Item] = cast(list[Item], list(body.get("data") or []))
        self.has_more = bool(body.get("has_more"))

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {len(self.data)} items, has_more={self.has_more}>"

    @property
    def next_cursor(self) -> str | None:
        if not self.has_more or not self.data:
            return None
        return cursor_of(self.data[-1])


class Page(_PageData[Item]):
    def __init__(self, body: Mapping[str, Any], fetch_after: Callable[[str], Page[Item]]) -> None:
        super().__init__(body)
        self._fetch_after = fetch_after

    def __iter__(self) -> Iterator[Item]:
        return iter(self.data)

    def next_page(self) -> Page[Item] | None:
        cursor = self.next_cursor
        return self._fetch_after(cursor) if cursor is not None else None

    def auto_paging_iter(self) -> Iterator[Item]:
        page: Page[Item] | None = self
        while page is not None:
            yield from page.data
            page = page.next_page()


class AsyncPage(_PageData[Item]):
    def __init__(
        self, body: Mapping[str, Any], fetch_after: Callable[[str], Awaitable[AsyncPage[Item]]]
    ) -> None:
        super().__init__(body)
        self._fetch_after = fetch_after

    def __iter__(self) -> Iterator[Item]:
        return iter(self.data)

    async def next_page(self) -> AsyncPage[Item] | None:
        cursor = self.next_cursor
        return await self._fetch_after(cursor) if cursor is not None else None

    async def auto_paging_iter(self) -> AsyncIterator[Item]:
        page: AsyncPage[Item] | None = self
        while page is not None:
            for item in page.data:
                yield item
            page = await page.next_page()
