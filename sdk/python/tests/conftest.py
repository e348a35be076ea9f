"""The client's tests run against the real app: pytest-django's live server on PostgreSQL.

Customers, plans and API keys are made with the app's own services, as in the app's tests; the client
then talks HTTP to the live server, directly or through ``FlakyProxy``, a loopback server that answers
from a script of faults (a 500 after the write ran, a 429, a dropped connection) to test retries and
buffering against the real API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from live_app import FlakyProxy

from billing_app.models import ApiKey
from billing_client import Client
from customers.models import Customer
from plans.models import PlanVersion

# The app's catalog and customer builders (make_plan, make_customer, pro_plan, ...).
pytest_plugins = ["tests.catalog_fixtures"]


@pytest.fixture
def api_key(live_server: Any) -> str:
    _, raw_key = ApiKey.generate(name="sdk tests")
    return raw_key


@pytest.fixture
def base_url(live_server: Any) -> str:
    return str(live_server.url)


@pytest.fixture
def client(base_url: str, api_key: str) -> Iterator[Client]:
    with Client(api_key=api_key, base_url=base_url) as billing:
        yield billing


@pytest.fixture
def llm_plan(make_plan: Callable[..., PlanVersion]) -> PlanVersion:
    """LLM tokens at $0.000002 each, none included; overage allowed unless the customer blocks it."""
    return make_plan(
        "llm",
        prices=[{"meter": "llm_tokens", "model": "per_unit", "unit_amount": "0.000002", "included": "0"}],
    )


@pytest.fixture
def acme(live_server: Any, pro_plan: PlanVersion, make_customer: Callable[..., Customer]) -> Customer:
    """Acme on Pro: 100 API calls included, then $0.10 a call."""
    return make_customer("pro", external_id="acme")


@pytest.fixture
def tokens_customer(
    live_server: Any, llm_plan: PlanVersion, make_customer: Callable[..., Customer]
) -> Customer:
    return make_customer("llm", external_id="tokens-co")


@pytest.fixture
def flaky_proxy(base_url: str) -> Iterator[Callable[..., FlakyProxy]]:
    proxies: list[FlakyProxy] = []

    def start(script: list[str], **options: Any) -> FlakyProxy:
        proxy = FlakyProxy(base_url, script, **options).__enter__()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()
