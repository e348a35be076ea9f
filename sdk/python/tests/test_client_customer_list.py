"""``customers.list()`` and auto-pagination over ``GET /api/v1/customers`` (cursor pages, Stripe's shape:
``limit``, ``starting_after``, ``{"object": "list", "data", "has_more"}``).

The tests marked ``needs_list_endpoints`` need that endpoint, which lands separately; until then they
fail, and ``-m "not needs_list_endpoints"`` leaves them out.
"""

from collections.abc import Callable
from typing import Any

import pytest
from live_app import run_async

from billing_client import AsyncClient, Client, Page
from customers.models import Customer

CUSTOMER_IDS = [f"customer-{n:02d}" for n in range(7)]


@pytest.fixture
def seven_customers(live_server: Any, pro_plan: Any, make_customer: Callable[..., Customer]) -> list[str]:
    for external_id in CUSTOMER_IDS:
        make_customer("pro", external_id=external_id)
    return CUSTOMER_IDS


@pytest.mark.needs_list_endpoints
def test_one_page_holds_at_most_the_limit(client: Client, seven_customers: list[str]) -> None:
    page = client.customers.list(limit=3)

    assert len(page) == 3
    assert page.has_more is True
    assert all(customer["object"] == "customer" for customer in page)


@pytest.mark.needs_list_endpoints
def test_auto_paging_walks_every_customer_once(client: Client, seven_customers: list[str]) -> None:
    walked = [customer["external_id"] for customer in client.customers.list(limit=3).auto_paging_iter()]

    assert sorted(walked) == seven_customers
    assert len(walked) == len(set(walked))


@pytest.mark.needs_list_endpoints
def test_the_next_page_starts_after_the_last_customer(client: Client, seven_customers: list[str]) -> None:
    first = client.customers.list(limit=4)
    second = first.next_page()

    assert second is not None
    assert second.has_more is False
    assert {c["external_id"] for c in first} | {c["external_id"] for c in second} == set(seven_customers)
    assert second.next_page() is None


@pytest.mark.needs_list_endpoints
def test_async_auto_paging_walks_every_customer_once(
    api_key: str, base_url: str, seven_customers: list[str]
) -> None:
    async def walk() -> list[str]:
        async with AsyncClient(api_key=api_key, base_url=base_url) as billing:
            page = await billing.customers.list(limit=2)
            return [customer["external_id"] async for customer in page.auto_paging_iter()]

    walked = run_async(walk())

    assert sorted(walked) == seven_customers
    assert len(walked) == len(set(walked))


def test_the_cursor_is_the_last_items_id_or_else_its_external_id() -> None:
    asked: list[str] = []
    pages = {
        "": {"data": [{"id": 1}, {"id": 2}], "has_more": True},
        "2": {"data": [{"external_id": "c"}], "has_more": True},
        "c": {"data": [{"external_id": "d"}], "has_more": False},
    }

    def fetch_after(cursor: str) -> Page[dict[str, Any]]:
        asked.append(cursor)
        return Page(pages[cursor], fetch_after)

    items = list(Page(pages[""], fetch_after).auto_paging_iter())

    assert items == [{"id": 1}, {"id": 2}, {"external_id": "c"}, {"external_id": "d"}]
    assert asked == ["2", "c"]
