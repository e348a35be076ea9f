"""The data the scale-out tests start their app processes on, made through the app's own services.

Run in the app's environment (``manage.py shell -c``) against the database the processes will use, since
those tests' servers are not the suite's test database: ``scenario_create()`` prints the API keys as JSON.
"""

import json
from decimal import Decimal

from django.contrib.auth import get_user_model

from billing_app.models import ApiKey
from customers.models import MemberRole
from customers.services import customer_create, member_create
from plans.models import Plan
from plans.services import meter_upsert, plan_version_create, plan_version_publish

PASSWORD = "password"


def scenario_create(*, customers: int = 1, api_keys: int = 2) -> None:
    """Free: 20 AI actions a month, a hard cap. Customers ``acme`` (then ``acme-2``…) on it, each with an
    admin member who logs in as ``maya`` (``maya-2``…), and ``api_keys`` backend keys."""
    meter_upsert(key="ai_action", name="AI actions", unit="action", aggregation="sum")
    plan, _ = Plan.objects.get_or_create(code="free", defaults={"name": "Free"})
    version = plan_version_create(
        plan=plan,
        currency="usd",
        interval="month",
        base_fee=Decimal(0),
        prices=[{"meter": "ai_action", "model": "per_unit", "unit_amount": "0", "included": "20"}],
        entitlements=[{"feature": "ai_action", "limit": "20"}],
        credit_packs=[],
    )
    plan_version_publish(plan_version=version)
    for number in range(1, customers + 1):
        suffix = "" if number == 1 else f"-{number}"
        customer = customer_create(external_id=f"acme{suffix}", name=f"Acme{suffix}", plan_code="free")
        user = get_user_model().objects.create_user(username=f"maya{suffix}", password=PASSWORD)
        member_create(
            customer=customer, external_id=f"maya{suffix}", name="Maya", role=MemberRole.ADMIN, user=user
        )
    keys = [ApiKey.generate(name=f"backend {number}")[1] for number in range(api_keys)]
    print(json.dumps({"api_keys": keys}))
