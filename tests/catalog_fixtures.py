"""Catalog and customer builders shared by the tests, through the app's own services."""

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from customers.models import Customer
from customers.services import customer_create, spend_controls_update
from plans.models import Plan, PlanVersion
from plans.services import meter_upsert, plan_version_create, plan_version_publish


@pytest.fixture
def make_plan(db) -> Callable[..., PlanVersion]:
    """Publish a plan version from catalog-shaped dicts (meters are created as needed)."""

    def make(
        code: str,
        *,
        base_fee: str = "0",
        prices: list[dict[str, Any]] = (),  # type: ignore[assignment]
        entitlements: list[dict[str, Any]] = (),  # type: ignore[assignment]
        credit_packs: list[dict[str, Any]] = (),  # type: ignore[assignment]
        currency: str = "usd",
        interval: str = "month",
        overage: str = "allowed",
    ) -> PlanVersion:
        for price in prices:
            meter_upsert(
                key=price["meter"],
                name=price["meter"].replace("_", " ").title(),
                unit="unit",
                aggregation="sum",
            )
        for entitlement in entitlements:
            if "limit" in entitlement:
                meter_upsert(
                    key=entitlement["feature"], name=entitlement["feature"], unit="unit", aggregation="sum"
                )
        plan, _ = Plan.objects.get_or_create(code=code, defaults={"name": code.title()})
        version = plan_version_create(
            plan=plan,
            currency=currency,
            interval=interval,
            base_fee=Decimal(base_fee),
            prices=list(prices),
            entitlements=list(entitlements),
            credit_packs=list(credit_packs),
            overage=overage,
        )
        return plan_version_publish(plan_version=version)

    return make


@pytest.fixture
def make_customer(db) -> Callable[..., Customer]:
    def make(plan_code: str, external_id: str = "acme", **limits: Any) -> Customer:
        customer = customer_create(external_id=external_id, name=external_id.title(), plan_code=plan_code)
        if limits:
            spend_controls_update(
                customer=customer,
                soft_limit=limits.get("soft_limit"),
                hard_limit=limits.get("hard_limit"),
                block_overage=limits.get("block_overage", False),
            )
        return customer

    return make


@pytest.fixture
def pro_plan(make_plan) -> PlanVersion:
    """Pro: $20 a month, 100 API calls included, then $0.10 a call."""
    return make_plan(
        "pro",
        base_fee="20.00",
        prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.10", "included": "100"}],
    )


@pytest.fixture
def credits_plan(make_plan) -> PlanVersion:
    """Prepaid credits: workflows cost 1, 5 or 20 credits by complexity; no credit pack, so no overage."""
    return make_plan(
        "credits",
        prices=[
            {
                "meter": "workflow_run",
                "model": "dimensional",
                "unit": "credits",
                "dimension": "complexity",
                "rates": {"simple": "1", "standard": "5", "complex": "20"},
                "default_rate": None,
            }
        ],
    )


@pytest.fixture
def free_plan(make_plan) -> PlanVersion:
    """Free: 20 AI actions a month, hard cap; premium models off."""
    return make_plan(
        "free",
        prices=[{"meter": "ai_action", "model": "per_unit", "unit_amount": "0", "included": "20"}],
        entitlements=[
            {"feature": "ai_action", "limit": "20"},
            {"feature": "premium_models", "enabled": False},
        ],
    )


def event(key: str, *, customer: str = "acme", meter: str = "api_call", **fields: Any) -> dict[str, Any]:
    return {"idempotency_key": key, "customer": customer, "meter": meter, **fields}
