"""Browser tests: Debian's Chromium driven by pytest-playwright against pytest-django's live server.

Playwright's sync API runs an event loop in the test thread for the whole session, so Django would
refuse ORM calls from tests and fixtures as "async unsafe"; they are plain synchronous calls here.
Screenshots go to tests/artifacts/ (git-ignored).
"""

import json
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import Page

from billing_app.models import ApiKey
from customers.models import Customer, MemberRole
from customers.services import customer_create, member_create, spend_controls_update, subscription_start
from plans.catalog.importing import catalog_import
from plans.models import PlanVersion, VersionStatus
from usage.services import credit_grant_create, wallet_top_up

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
DAYS = 12
# (external id, name, role, login = password): the seed_demo shape, smaller.
MEMBERS = [
    ("maya", "Maya Chen", MemberRole.ADMIN, "demo"),
    ("raj", "Raj Patel", MemberRole.MEMBER, "member"),
    ("lena", "Lena Fischer", MemberRole.MEMBER, None),
]
ACTIONS = [("generate_report", 6), ("summarize_thread", 3), ("draft_email", 1)]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_type_launch_args, "executable_path": CHROMIUM}


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def api_client(live_server) -> Iterator[httpx.Client]:
    """The metering API of the live server, as a customer's backend calls it."""
    _, raw_key = ApiKey.generate(name="browser tests")
    with httpx.Client(
        base_url=f"{live_server.url}/api/v1", headers={"Authorization": f"Bearer {raw_key}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
def acme(live_server, api_client: httpx.Client) -> Customer:
    """Acme AI on Hybrid for 12 days, three members, a promotion and a top-up; usage sent to the API.

    Hybrid includes 5M LLM tokens; 8.64M are sent, so the period already has usage charges.
    """
    catalog_import(data=json.loads((Path(settings.BASE_DIR) / "catalog" / "demo.json").read_text()))
    hybrid = PlanVersion.objects.filter(plan__code="hybrid", status=VersionStatus.PUBLISHED).latest("number")
    now = timezone.now()
    start = (now - timedelta(days=DAYS)).replace(hour=0, minute=0, second=0, microsecond=0)
    customer = customer_create(external_id="acme", name="Acme AI", email="billing@acme.example")
    subscription_start(customer=customer, plan_version=hybrid, at=start)
    users = get_user_model().objects
    for external_id, name, role, login in MEMBERS:
        user = users.create_user(login, f"{login}@acme.example", login) if login else None
        member_create(customer=customer, external_id=external_id, name=name, role=role, user=user)
    spend_controls_update(customer=customer, soft_limit=Decimal(5), hard_limit=None, block_overage=False)
    credit_grant_create(
        customer=customer,
        amount=Decimal(50),
        kind="promotional",
        unit="usd",
        expires_at=now + timedelta(days=40),
        description="Launch promotion",
    )
    wallet_top_up(customer=customer, amount=Decimal(100), note="Prepaid top-up")
    _send_usage(api_client, start=start)
    return customer


def _send_usage(api: httpx.Client, *, start: Any) -> None:
    events = []
    for day in range(DAYS):  # the whole days before today: 12 × 720,000 tokens
        moment = start + timedelta(days=day, hours=10)
        for n, (member, _, _, _) in enumerate(MEMBERS * 3):
            action, weight = ACTIONS[n % len(ACTIONS)]
            common = {"customer": "acme", "user": member, "timestamp": moment.isoformat()}
            events.append(
                {
                    **common,
                    "idempotency_key": f"d{day}-{n}-a",
                    "meter": "ai_action",
                    "quantity": 40 * weight,
                    "properties": {"action": action},
                }
            )
            events.append(
                {
                    **common,
                    "idempotency_key": f"d{day}-{n}-t",
                    "meter": "llm_tokens",
                    "quantity": 24000 * weight,
                    "properties": {"action": action, "model": ("gpt-4o", "claude-sonnet")[n % 2]},
                }
            )
    response = api.post("/events", json={"events": events})
    assert response.status_code == 200, response.text
    assert {result["status"] for result in response.json()["results"]} == {"accepted"}


@pytest.fixture
def log_in(page: Page, live_server) -> Callable[[str], Page]:
    def log_in(username: str) -> Page:
        page.goto(f"{live_server.url}/accounts/login/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(username)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url("**/settings/usage")
        return page

    return log_in
