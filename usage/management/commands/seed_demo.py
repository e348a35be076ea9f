"""Demo data: the launch catalog, "Acme AI" on Hybrid with five members and 45 days of usage.

Everything goes through the app's own services, day by day, as if the days had really passed:
the subscription rolls into its next period on the way, so the dashboard shows a closed period
and a current one, with one of this period's events corrected. Running it again changes nothing.
"""

import os
import random
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from customers.models import Customer, MemberRole, Subscription
from customers.services import (
    customer_create,
    member_create,
    spend_controls_update,
    subscription_roll_period,
    subscription_start,
)
from plans.models import PlanVersion, VersionStatus
from usage.corrections import usage_event_correct
from usage.ingest import usage_events_ingest
from usage.models import UsageEvent
from usage.services import credit_grant_create, credit_pack_purchase, wallet_top_up

CATALOG = Path(settings.BASE_DIR) / "catalog" / "demo.json"
DAYS = 45

# (external id, name, role, dashboard login, share of the team's activity)
ACME_MEMBERS = [
    ("maya", "Maya Chen", MemberRole.ADMIN, "demo", 0.12),
    ("raj", "Raj Patel", MemberRole.MEMBER, "member", 0.46),  # the power user
    ("lena", "Lena Fischer", MemberRole.MEMBER, None, 0.18),
    ("tom", "Tom Okafor", MemberRole.MEMBER, None, 0.14),
    ("sofia", "Sofia Ruiz", MemberRole.MEMBER, None, 0.10),
]
# (action, share of AI actions, typical tokens per action)
ACTIONS = [
    ("generate_report", 0.34, 6000),
    ("summarize_thread", 0.28, 1800),
    ("draft_email", 0.18, 900),
    ("classify_ticket", 0.14, 300),
    ("translate_doc", 0.06, 3500),
]
MODELS = [("gpt-4o", 0.35), ("gpt-4o-mini", 0.5), ("claude-sonnet", 0.15)]
# Most of Acme's actions run on its own models; this share calls a hosted LLM and is billed in tokens.
HOSTED_LLM_SHARE = 0.05
# One of Raj's report runs this period was retried after a timeout, and every attempt was metered.
CORRECTION_REASON = "Retries were counted twice"
CORRECTION_KEY = "demo-retries-counted-twice"


class Command(BaseCommand):
    help = "Load the demo catalog, customers and 45 days of usage (idempotent)."

    def handle(self, *args: object, **options: object) -> None:
        # The demo creates logins with known passwords (admin / admin): never on a production database.
        if not settings.DEBUG:
            raise CommandError(
                "seed_demo creates logins with known passwords (admin / admin) and runs only with DEBUG=true."
            )
        if not CATALOG.exists():
            raise CommandError(f"The demo catalog {CATALOG} is missing.")
        call_command("catalog_import", str(CATALOG), verbosity=0)
        self._logins()
        if Customer.objects.filter(external_id="acme").exists():
            self.stdout.write("Demo data already loaded; nothing to do.")
        else:
            self._acme()
            self._small_customers()
            self.stdout.write(self.style.SUCCESS("Demo data loaded."))
        base = f"http://127.0.0.1:{os.environ.get('PORT') or 8000}"  # where `make run` serves
        self.stdout.write(
            "\nDemo logins (development only):\n"
            f"  customer admin  demo / demo      {base}/settings/usage\n"
            f"  customer member member / member  {base}/settings/usage\n"
            f"  staff           admin / admin    {base}/admin/\n"
        )

    def _logins(self) -> None:
        user_model = get_user_model()
        if not user_model.objects.filter(username="admin").exists():
            user_model.objects.create_superuser("admin", "admin@example.com", "admin")

    def _version(self, code: str) -> PlanVersion:
        version = (
            PlanVersion.objects.filter(plan__code=code, status=VersionStatus.PUBLISHED)
            .order_by("-number")
            .first()
        )
        if version is None:
            raise CommandError(f"The demo catalog has no published plan {code!r}.")
        return version

    @transaction.atomic
    def _acme(self) -> None:
        user_model = get_user_model()
        now = timezone.now().replace(microsecond=0)
        start = (now - timedelta(days=DAYS)).replace(hour=0, minute=0, second=0)
        acme = customer_create(external_id="acme", name="Acme AI", email="billing@acme.example")
        subscription_start(customer=acme, plan_version=self._version("hybrid"), at=start)
        for external_id, name, role, login, _ in ACME_MEMBERS:
            user = None
            if login:
                user = user_model.objects.create_user(
                    login, f"{login}@acme.example", login, first_name=name.split()[0]
                )
            member_create(
                customer=acme,
                external_id=external_id,
                name=name,
                email=f"{external_id}@acme.example",
                role=role,
                user=user,
            )
        spend_controls_update(customer=acme, soft_limit=Decimal("250"), hard_limit=None, block_overage=False)
        credit_grant_create(
            customer=acme,
            amount=Decimal("50"),
            kind="promotional",
            unit="usd",
            expires_at=now + timedelta(days=40),
            description="Launch promotion",
            now=start,
        )
        wallet_top_up(customer=acme, amount=Decimal("100"), note="Prepaid top-up")
        self._simulate(acme, start=start, now=now)
        self._correction(acme, now=now)

    def _simulate(self, customer: Customer, *, start: datetime, now: datetime) -> None:
        """One batch per day through ingest, with ``now`` at the day's end, rolling periods as they end."""
        rng = random.Random(42)  # the same demo every time
        members = [(m[0], m[4]) for m in ACME_MEMBERS]
        day = start
        while day < now:
            day_end = min(day + timedelta(days=1) - timedelta(seconds=1), now)
            subscription = Subscription.objects.get(customer=customer)
            subscription_roll_period(subscription=subscription, now=day_end)
            weekday_factor = 1.0 if day.weekday() < 5 else 0.3
            growth = 1 + (day - start).days / 90  # a growing team
            events = []
            for n in range(int(90 * weekday_factor * growth)):
                member = rng.choices([m for m, _ in members], [w for _, w in members])[0]
                action = rng.choices([a for a, _, _ in ACTIONS], [w for _, w, _ in ACTIONS])[0]
                tokens = next(t for a, _, t in ACTIONS if a == action)
                moment = day + timedelta(seconds=rng.randint(8 * 3600, 19 * 3600))
                moment = min(moment, day_end)
                actions = rng.randint(20, 70)
                model = rng.choices([m for m, _ in MODELS], [w for _, w in MODELS])[0]
                common = {"customer": customer.external_id, "user": member, "timestamp": moment.isoformat()}
                events.append(
                    {
                        **common,
                        "idempotency_key": f"demo-{day:%Y%m%d}-{n}-a",
                        "meter": "ai_action",
                        "quantity": actions,
                        "properties": {"action": action},
                    }
                )
                events.append(
                    {
                        **common,
                        "idempotency_key": f"demo-{day:%Y%m%d}-{n}-t",
                        "meter": "llm_tokens",
                        "quantity": int(tokens * actions * HOSTED_LLM_SHARE * rng.uniform(0.6, 1.4)),
                        "properties": {"action": action, "model": model, "cached": rng.random() < 0.1},
                    }
                )
                if rng.random() < 0.08:
                    events.append(
                        {
                            **common,
                            "idempotency_key": f"demo-{day:%Y%m%d}-{n}-e",
                            "meter": "export",
                            "quantity": 1,
                            "properties": {"action": "export_csv"},
                        }
                    )
            for batch_start in range(0, len(events), 1000):
                usage_events_ingest(raw_events=events[batch_start : batch_start + 1000], now=day_end)
            day += timedelta(days=1)

    def _correction(self, customer: Customer, *, now: datetime) -> None:
        """Raj's largest report run of the current period halved, through the service the API and admin use,
        so the usage page lists a correction with its reason."""
        subscription = Subscription.objects.get(customer=customer)
        event = (
            UsageEvent.objects.filter(
                customer=customer,
                period_start=subscription.current_period_start,
                meter__key="ai_action",
                member__external_id="raj",
                properties__action="generate_report",
                corrects__isnull=True,
            )
            .order_by("-quantity", "-timestamp", "-pk")
            .first()
        )
        if event is None:
            raise CommandError("The demo usage has no report run of Raj's this period to correct.")
        usage_event_correct(
            event_id=event.pk,
            quantity=event.quantity // 2,
            reason=CORRECTION_REASON,
            idempotency_key=CORRECTION_KEY,
            by="staff admin",
            now=now,
        )

    def _small_customers(self) -> None:
        """A customer on Free and one on prepaid credits, a few days in, so scoping has something to show; and
        one on pay-as-you-go whose long-context calls cost more than the catalog's rate, a thin margin."""
        now = timezone.now()
        umbrella = customer_create(external_id="umbrella", name="Umbrella Labs", email="ops@umbrella.example")
        subscription_start(customer=umbrella, plan_version=self._version("payg"), at=now - timedelta(days=2))
        usage_events_ingest(
            raw_events=[
                {
                    "idempotency_key": f"umbrella-{i}",
                    "customer": "umbrella",
                    "meter": "llm_tokens",
                    "user": "uma",
                    "quantity": 200_000,
                    # Every other call is long-context: the provider's bill for it, sent as properties.cost,
                    # is more than the catalog's per-token rate and more than the customer pays for it.
                    "properties": {"model": "claude-sonnet", "action": "analyze_contract"}
                    | ({"cost": "3.40"} if i % 2 else {}),
                    "timestamp": (now - timedelta(hours=2 * i)).isoformat(),
                }
                for i in range(20)
            ]
        )
        globex = customer_create(external_id="globex", name="Globex", email="ops@globex.example")
        subscription_start(customer=globex, plan_version=self._version("free"), at=now - timedelta(days=3))
        usage_events_ingest(
            raw_events=[
                {
                    "idempotency_key": f"globex-{i}",
                    "customer": "globex",
                    "meter": "ai_action",
                    "user": "gina",
                    "properties": {"action": "draft_email"},
                    "timestamp": (now - timedelta(hours=2 * i)).isoformat(),
                }
                for i in range(14)
            ]
        )
        initech = customer_create(external_id="initech", name="Initech", email="it@initech.example")
        credits_version = self._version("credits")
        subscription_start(customer=initech, plan_version=credits_version, at=now - timedelta(days=3))
        pack = credits_version.credit_packs.order_by("amount").first()
        if pack is not None:
            credit_pack_purchase(customer=initech, pack=pack, idempotency_key="initech-pack-1")
        usage_events_ingest(
            raw_events=[
                {
                    "idempotency_key": f"initech-{i}",
                    "customer": "initech",
                    "meter": "workflow_run",
                    "user": "ivan",
                    "properties": {"complexity": ["simple", "standard", "complex"][i % 3]},
                    "timestamp": (now - timedelta(hours=2 * i)).isoformat(),
                }
                for i in range(30)
            ]
        )
