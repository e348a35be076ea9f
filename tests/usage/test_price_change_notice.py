"""A price change that moves subscribers: notice with each customer's own bill, a one-click choice by signed
link or on the plan page, the move at renewal in batches, and the first-invoice safety net."""

from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core import mail, signing
from django.db import connection, transaction
from django.utils import timezone

from billing_app.customer_emails import customer_emails_send, price_change_emails_send
from core.errors import InvalidInput
from customers.models import MemberRole, Notification, NotificationKind, Subscription
from customers.tasks import subscriptions_roll_periods_task
from plans.catalog import catalog_parse
from plans.catalog.importing import catalog_import
from plans.models import ChangeEffect, Meter, MigrationStatus, Plan, PlanMigration, PlanVersion, VersionStatus
from plans.services import PlanMigrationInProgress, plan_version_create, plan_version_publish
from tests.customers.factories import MemberFactory, UserFactory
from tests.usage.test_concurrency import run_concurrently
from tests.usage.test_price_changes import period_usage
from usage.models import CreditGrant, CreditLedgerEntry, MigrationChoice, PeriodUsage, PlanMigrationNotice
from usage.plan_migrations import (
    LINK_SALT,
    PriceChangeClosed,
    plan_migration_schedule,
    plan_migrations_run,
    price_change_choose,
    price_change_link_token,
)

pytestmark = pytest.mark.django_db
D = Decimal
PAGE = "/settings/plan"
PANEL_POST = "/settings/plan/price-change"


def midnight_in(days: int) -> datetime:
    moment = timezone.now() + timedelta(days=days)
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)


def draft(code: str, *, base_fee: str, prices: list[dict], credit_packs: list[dict] = ()) -> PlanVersion:  # type: ignore[assignment]
    return plan_version_create(
        plan=Plan.objects.get(code=code),
        currency="usd",
        interval="month",
        base_fee=base_fee,
        prices=prices,
        entitlements=[],
        credit_packs=list(credit_packs),
    )


def admin_of(customer, username: str):
    return MemberFactory(
        customer=customer,
        role=MemberRole.ADMIN,
        email=f"{username}@{customer.external_id}.example",
        user=UserFactory(username=username),
    )


CALLS_V1 = {"meter": "api_call", "model": "per_unit", "unit_amount": "0.10", "included": "100"}
CALLS_V2 = {
    "meter": "api_call",
    "model": "graduated",
    "tiers": [{"up_to": "100", "unit_amount": "0"}, {"up_to": None, "unit_amount": "0.08"}],
}


def tokens(gpt4o: str) -> dict:
    return {
        "meter": "llm_tokens",
        "model": "dimensional",
        "dimension": "model",
        "rates": {"gpt-4o": gpt4o, "mini": "0.001"},
        "default_rate": None,
    }


@pytest.fixture
def pro(make_plan, make_customer):
    """Pro v1 ($20, 100 calls included then 10c; tokens by model) with three subscribers who used it for four
    months; a draft v2 ($25, graduated calls: 100 free then 8c; gpt-4o at 2c)."""
    v1 = make_plan("pro", base_fee="20.00", prices=[CALLS_V1, tokens("0.01")])
    v2 = draft("pro", base_fee="25.00", prices=[CALLS_V2, tokens("0.02")])
    calls, llm = Meter.objects.get(key="api_call"), Meter.objects.get(key="llm_tokens")
    customers = {name: make_customer("pro", name) for name in ("light", "heavy", "mid")}
    for months_ago in (1, 2, 3, 4):
        period_usage(customers["light"], calls, 100, months_ago=months_ago)
        period_usage(customers["heavy"], calls, 1100, months_ago=months_ago)
        period_usage(
            customers["heavy"], llm, 1000, months_ago=months_ago, dimension_mix={"gpt-4o": 300, "mini": 700}
        )
    admins = {name: admin_of(customer, f"{name}-admin") for name, customer in customers.items()}
    return v1, v2, customers, admins


def notify(v2: PlanVersion, *, days: int = 61) -> PlanMigration:
    plan_version_publish(plan_version=v2, migrate_at=midnight_in(days))
    plan_migrations_run()
    price_change_emails_send()
    return PlanMigration.objects.get(plan_version=v2)


def notice_of(customer) -> PlanMigrationNotice:
    return PlanMigrationNotice.objects.get(customer=customer)


def link(customer, choice: str) -> str:
    return f"/settings/plan/price-change/{price_change_link_token(notice=notice_of(customer), choice=choice)}"


# --- Publishing with an effect -----------------------------------------------------------------------


def test_a_migration_date_gives_at_least_the_notice_period(pro):
    _, v2, _, _ = pro
    with pytest.raises(InvalidInput, match="at least 60 days' notice"):
        plan_version_publish(plan_version=v2, migrate_at=midnight_in(59))
    v2.refresh_from_db()
    assert v2.status == VersionStatus.DRAFT and not PlanMigration.objects.exists()

    published = plan_version_publish(plan_version=v2, migrate_at=midnight_in(61))

    assert published.changelog_entry.effect == ChangeEffect.MIGRATED_AT_RENEWAL
    assert published.migration.migrate_at == midnight_in(61)


def test_the_notice_period_is_a_setting(pro, settings):
    _, v2, _, _ = pro
    settings.PRICE_CHANGE_NOTICE_DAYS = 90
    with pytest.raises(InvalidInput, match="at least 90 days' notice"):
        plan_version_publish(plan_version=v2, migrate_at=midnight_in(61))


def test_a_plan_has_one_migration_at_a_time(pro):
    _, v2, _, _ = pro
    plan_version_publish(plan_version=v2, migrate_at=midnight_in(61))
    v3 = draft("pro", base_fee="30.00", prices=[CALLS_V1])
    with pytest.raises(PlanMigrationInProgress):
        plan_version_publish(plan_version=v3, migrate_at=midnight_in(90))


def test_the_grandfathered_effect_marks_existing_subscribers(pro):
    v1, v2, _, _ = pro

    plan_version_publish(plan_version=v2, effect=ChangeEffect.GRANDFATHERED)

    assert set(Subscription.objects.values_list("plan_version", "grandfathered")) == {(v1.pk, True)}
    assert not PlanMigration.objects.exists()
    plan_migrations_run()
    assert not PlanMigrationNotice.objects.exists()


def pro_in_a_file(migration: dict, **pricing) -> dict:
    """A catalog file of the Pro plan at v2's prices (or ``pricing``), with ``migration``."""
    plan = {"code": "pro", "name": "Pro", "currency": "usd", "interval": "month", "base_fee": "25.00"}
    plan |= {"prices": [CALLS_V2, tokens("0.02")], **pricing, "migration": migration}
    return {"meters": [], "plans": [plan]}


def test_the_catalog_file_sets_the_effect_and_the_date(pro):
    _, v2, _, _ = pro
    v2.delete()
    day = midnight_in(70)
    data = pro_in_a_file({"effect": "migrated_at_renewal", "date": f"{day:%Y-%m-%d}"})

    report = catalog_import(data=data)

    assert "v2 published (migrated_at_renewal)" in " ".join(report.lines)
    assert PlanMigration.objects.get().migrate_at == day
    assert not catalog_import(data=data).changed  # the same file again changes nothing


@pytest.mark.parametrize(
    ("migration", "message"),
    [
        ({"effect": "migrated_at_renewal", "date": "next spring"}, "'date' must be a day"),
        (
            {"effect": "grandfathered", "date": "2031-01-01"},
            "'date' goes with the effect migrated_at_renewal",
        ),
        ({"effect": "new_plan"}, "'effect' is 'new_plan'"),
        ({"effect": "grandfathered", "when": "soon"}, "unknown key 'when'"),
        ("soon", "must be an object"),
    ],
)
def test_the_catalog_file_refuses_a_wrong_migration(migration, message):
    with pytest.raises(InvalidInput, match=message):
        catalog_parse(pro_in_a_file(migration, prices=[]))


def test_a_catalog_migration_too_soon_writes_nothing(pro):
    _, v2, _, _ = pro
    v2.delete()
    data = pro_in_a_file({"effect": "migrated_at_renewal", "date": f"{midnight_in(10):%Y-%m-%d}"})

    with pytest.raises(InvalidInput, match="60 days' notice"):
        catalog_import(data=data)

    assert not PlanVersion.objects.filter(number=2).exists()


def test_a_catalog_migration_without_a_date_takes_the_earliest_fair_one(pro):
    _, v2, _, _ = pro
    v2.delete()

    catalog_import(data=pro_in_a_file({"effect": "migrated_at_renewal"}))

    migrate_at = PlanMigration.objects.get().migrate_at
    assert migrate_at in (midnight_in(60), midnight_in(61))
    assert migrate_at >= timezone.now() + timedelta(days=60)


# --- Notice ------------------------------------------------------------------------------------------


def test_each_affected_customer_is_told_their_own_bill_on_both_versions(pro):
    _, v2, customers, _ = pro
    Subscription.objects.filter(customer=customers["mid"]).update(grandfathered=True)  # promised before

    notify(v2)

    notices = {n.customer.external_id: n for n in PlanMigrationNotice.objects.select_related("customer")}
    assert set(notices) == {"light", "heavy"}
    # Light, three periods of 100 calls: only the base fee moves, 3 × $20 → 3 × $25.
    assert (notices["light"].old_total, notices["light"].new_total, notices["light"].periods) == (
        D(60),
        D(75),
        3,
    )
    # Heavy, per period: v1 $20 + 1,000 × 10c + 300 × 1c + 700 × 0.1c = $123.70; v2 $25 + 1,000 × 8c
    # + 300 × 2c + 700 × 0.1c = $111.70.
    assert (notices["heavy"].old_total, notices["heavy"].new_total) == (D("371.10"), D("335.10"))
    assert notices["heavy"].usage == {"api_call": "3300", "llm_tokens": "3000"}
    told = Notification.objects.filter(kind=NotificationKind.PRICE_CHANGE_NOTICE)
    assert sorted(told.values_list("customer__external_id", flat=True)) == ["heavy", "light"]


def test_the_email_carries_the_change_the_usage_the_bills_and_two_links(pro, client):
    _, v2, _, _ = pro

    notify(v2)

    by_recipient = {tuple(message.to): message for message in mail.outbox}
    assert set(by_recipient) == {(f"{name}-admin@{name}.example",) for name in ("light", "heavy", "mid")}
    body = by_recipient[("heavy-admin@heavy.example",)].body
    assert "Pro prices change" in by_recipient[("heavy-admin@heavy.example",)].subject
    assert "Base fee: $20.00 → $25.00 per month." in body
    assert "api_call: 3300" in body and "llm_tokens: 3000" in body
    assert "(v1): $371.10" in body and "(v2): $335.10" in body
    links = [line.split(": ", 1)[1] for line in body.splitlines() if "/settings/plan/price-change/" in line]
    assert len(links) == 2 and all(url.startswith("http://127.0.0.1:8000/") for url in links)
    # The link works as mailed: its page asks to confirm.
    assert client.get(links[0].removeprefix("http://127.0.0.1:8000")).status_code == 200

    plan_migrations_run()
    price_change_emails_send()
    assert len(mail.outbox) == 3  # told once


def test_a_customer_the_new_version_cannot_price_is_left_where_they_are(pro):
    _, v2, customers, _ = pro
    llm = Meter.objects.get(key="llm_tokens")
    period_usage(customers["mid"], llm, 50, months_ago=1, dimension_mix={"claude": 50})  # no rate in v2

    notify(v2)

    mid = notice_of(customers["mid"])
    assert mid.skipped_reason.startswith("The new version cannot price")
    assert not any("mid-admin@mid.example" in message.to for message in mail.outbox)


def test_the_backtest_of_a_credits_plan_prices_credits_at_the_pack_rate(make_plan, make_customer):
    """v1: simple 1 credit, complex 20; v2: complex 30; credits at $10 per 1,000 (1c each)."""
    pack = [{"price": "10.00", "credits": "1000"}]
    rates = {"simple": "1", "complex": "20"}
    runs = {
        "meter": "workflow_run",
        "model": "dimensional",
        "unit": "credits",
        "dimension": "complexity",
        "default_rate": None,
    }
    make_plan("flow", prices=[runs | {"rates": rates}], credit_packs=pack)
    v2 = draft("flow", base_fee="0", prices=[runs | {"rates": rates | {"complex": "30"}}], credit_packs=pack)
    customer = make_customer("flow", "runner")
    meter = Meter.objects.get(key="workflow_run")
    period_usage(customer, meter, 110, months_ago=1, dimension_mix={"simple": 100, "complex": 10})

    notify(v2)

    # v1: 100 × 1 + 10 × 20 = 300 credits = $3.00; v2: 100 + 10 × 30 = 400 credits = $4.00.
    assert (notice_of(customer).old_total, notice_of(customer).new_total) == (D("3.00"), D("4.00"))


def test_a_reminder_goes_to_those_who_have_not_chosen_seven_days_before(pro):
    _, v2, customers, _ = pro
    migration = notify(v2)
    price_change_choose(notice_id=notice_of(customers["light"]).pk, choice="keep", by="test")
    price_change_choose(notice_id=notice_of(customers["mid"]).pk, choice="accept", by="test")
    mail.outbox.clear()

    with time_machine.travel(migration.migrate_at - timedelta(days=8)):
        assert price_change_emails_send() == 0
    with time_machine.travel(migration.migrate_at - timedelta(days=6)):
        assert price_change_emails_send() == 1
        assert price_change_emails_send() == 0

    assert [message.to for message in mail.outbox] == [["heavy-admin@heavy.example"]]
    assert mail.outbox[0].subject.startswith("Reminder: ")
    assert notice_of(customers["heavy"]).reminder_sent_at is not None


# --- The choice by link ------------------------------------------------------------------------------


def test_opening_a_link_only_asks(pro, client):
    _, v2, customers, _ = pro
    notify(v2)

    response = client.get(link(customers["light"], "keep"))

    assert response.status_code == 200
    assert "Keep my current plan?" in response.content.decode()
    assert notice_of(customers["light"]).choice == MigrationChoice.PENDING
    assert not Subscription.objects.get(customer=customers["light"]).grandfathered


def test_keeping_grandfathers_for_life_and_the_link_works_once(pro, client):
    _, v2, customers, _ = pro
    notify(v2)
    keep, accept = link(customers["light"], "keep"), link(customers["light"], "accept")

    response = client.post(keep)

    assert response.status_code == 200 and "You keep your current plan" in response.content.decode()
    notice = notice_of(customers["light"])
    assert (notice.choice, notice.chosen_by) == (MigrationChoice.KEEP, "email link")
    assert Subscription.objects.get(customer=customers["light"]).grandfathered
    for again in (keep, accept):
        response = client.post(again)
        assert response.status_code == 409
        assert "Already chosen: Keep the current plan" in response.content.decode()
    assert client.get(accept).status_code == 200  # says "already chosen", asks nothing
    assert "Already chosen" in client.get(accept).content.decode()
    assert notice_of(customers["light"]).chosen_at == notice.chosen_at


def test_an_expired_link_changes_nothing(pro, client):
    _, v2, customers, _ = pro
    migration = notify(v2)
    keep = link(customers["light"], "keep")

    with time_machine.travel(migration.migrate_at + timedelta(minutes=1)):
        response = client.post(keep)
        assert client.get(keep).status_code == 400

    assert response.status_code == 400 and "This link has expired" in response.content.decode()
    assert notice_of(customers["light"]).choice == MigrationChoice.PENDING
    assert not Subscription.objects.get(customer=customers["light"]).grandfathered


def test_a_forged_link_is_refused(pro, client):
    _, v2, customers, _ = pro
    notify(v2)
    light, heavy = notice_of(customers["light"]), notice_of(customers["heavy"])
    genuine = price_change_link_token(notice=light, choice="keep")
    forged = [
        genuine[:-2] + ("AA" if not genuine.endswith("AA") else "BB"),  # signature altered
        signing.dumps([heavy.pk, "keep"], salt="another-salt"),  # signed for something else
        signing.dumps([light.pk, "delete"], salt=LINK_SALT),  # a choice no link offers
        signing.dumps({"n": light.pk}, salt=LINK_SALT),
        signing.dumps([999999, "keep"], salt=LINK_SALT),  # no such notice
        "not-a-token",
    ]

    for token in forged:
        for method in (client.get, client.post):
            response = method(f"/settings/plan/price-change/{token}")
            assert response.status_code == 400, token
            assert "This link cannot be used" in response.content.decode()

    assert set(PlanMigrationNotice.objects.values_list("choice", flat=True)) == {MigrationChoice.PENDING}


def test_another_customers_link_shows_nothing_of_theirs(pro, client):
    _, v2, customers, admins = pro
    notify(v2)
    client.force_login(admins["heavy"].user)

    for method in (client.get, client.post):
        response = method(link(customers["light"], "keep"))
        assert response.status_code == 403
        assert "Light" not in response.content.decode()

    assert notice_of(customers["light"]).choice == MigrationChoice.PENDING


# --- The choice on the plan page ---------------------------------------------------------------------


def test_the_plan_page_shows_the_change_and_the_bills_to_admins(pro, client):
    _, v2, _, admins = pro
    notify(v2)
    client.force_login(admins["heavy"].user)

    page = client.get(PAGE).content.decode()

    assert "Pro prices change: v1 → v2" in page
    assert "$371.10" in page and "$335.10" in page
    assert 'data-testid="price-change-keep"' in page


def test_a_plain_member_sees_the_change_but_cannot_choose(pro, client):
    _, v2, customers, _ = pro
    notify(v2)
    member = MemberFactory(customer=customers["heavy"], user=UserFactory(username="bo"))
    client.force_login(member.user)

    assert 'data-testid="price-change-keep"' not in client.get(PAGE).content.decode()
    response = client.post(PANEL_POST, {"notice": notice_of(customers["heavy"]).pk, "choice": "keep"})
    assert response.status_code == 403
    assert notice_of(customers["heavy"]).choice == MigrationChoice.PENDING


def test_an_admin_accepts_on_the_plan_page_once(pro, client):
    _, v2, customers, admins = pro
    notify(v2)
    client.force_login(admins["heavy"].user)
    notice = notice_of(customers["heavy"])

    response = client.post(PANEL_POST, {"notice": notice.pk, "choice": "accept"})

    assert response.status_code == 302 and response["Location"].endswith("?done=price-accept")
    notice.refresh_from_db()
    assert (notice.choice, notice.chosen_by) == (MigrationChoice.ACCEPT, "plan page (heavy-admin)")
    again = client.post(PANEL_POST, {"notice": notice.pk, "choice": "keep"})
    assert again.status_code == 409 and "Already chosen" in again.content.decode()
    assert notice_of(customers["heavy"]).choice == MigrationChoice.ACCEPT


def test_an_admin_cannot_choose_for_another_customer(pro, client):
    _, v2, customers, admins = pro
    notify(v2)
    client.force_login(admins["heavy"].user)

    for notice in (notice_of(customers["light"]).pk, "x", ""):
        response = client.post(PANEL_POST, {"notice": notice, "choice": "keep"})
        assert response.status_code in (400, 404), notice
    response = client.post(PANEL_POST, {"notice": notice_of(customers["heavy"]).pk, "choice": "maybe"})
    assert response.status_code == 400

    assert set(PlanMigrationNotice.objects.values_list("choice", flat=True)) == {MigrationChoice.PENDING}


# --- Operators ---------------------------------------------------------------------------------------


def test_operators_see_progress_and_choices_in_admin(pro, admin_client):
    _, v2, customers, _ = pro
    migration = notify(v2)
    price_change_choose(notice_id=notice_of(customers["light"]).pk, choice="keep", by="test")

    page = admin_client.get(f"/admin/plans/planmigration/{migration.pk}/change/").content.decode()

    assert "3 customers: 3 emailed; 1 kept, 0 accepted, 2 not chosen" in page
    assert "Keep the current plan" in page
    listing = admin_client.get("/admin/usage/planmigrationnotice/?choice=keep").content.decode()
    assert "light" in listing and "heavy" not in listing


def test_an_operator_publishes_with_notice_from_the_research_page(pro, admin_client):
    _, v2, _, _ = pro
    page = admin_client.get(f"/admin/price-research/{v2.pk}/").content.decode()
    assert "Migration date (at least 60 days out)" in page

    too_soon = admin_client.post(
        f"/admin/price-research/{v2.pk}/publish/",
        {"effect": "migrated_at_renewal", "date": f"{midnight_in(30):%Y-%m-%d}"},
    )
    assert too_soon.status_code == 400 and "60 days" in too_soon.content.decode()
    response = admin_client.post(
        f"/admin/price-research/{v2.pk}/publish/",
        {"effect": "migrated_at_renewal", "date": f"{midnight_in(65):%Y-%m-%d}"},
    )

    migration = PlanMigration.objects.get()
    assert response.status_code == 302 and str(migration.pk) in response["Location"]
    assert migration.migrate_at == midnight_in(65) and migration.created_by.username == "admin"
    assert migration.plan_version.changelog_entry.effect == ChangeEffect.MIGRATED_AT_RENEWAL


def test_the_research_page_says_when_nobody_would_pay_differently(make_plan, make_customer, admin_client):
    make_plan("same", base_fee="10.00")
    make_customer("same", "steady")
    copy = draft("same", base_fee="10.00", prices=[])

    page = admin_client.get(f"/admin/price-research/{copy.pk}/").content.decode()

    assert "No subscriber would have paid differently under this version." in page


# --- The move at renewal -----------------------------------------------------------------------------


def roll_and_run(moment: datetime) -> None:
    with time_machine.travel(moment):
        subscriptions_roll_periods_task()
        plan_migrations_run()


def test_the_rest_move_at_renewal_in_batches_and_a_second_run_changes_nothing(pro):
    v1, v2, customers, _ = pro
    migration = notify(v2)
    price_change_choose(notice_id=notice_of(customers["light"]).pk, choice="keep", by="test")
    price_change_choose(notice_id=notice_of(customers["mid"]).pk, choice="accept", by="test")

    with time_machine.travel(migration.migrate_at - timedelta(hours=1)):
        assert plan_migration_schedule(migration=migration, batch_size=1) == 0  # not before the date
    with time_machine.travel(migration.migrate_at + timedelta(hours=1)):
        subscriptions_roll_periods_task()
        assert plan_migration_schedule(migration=migration, batch_size=1) == 2
        state = (
            list(Subscription.objects.order_by("pk").values()),
            list(PlanMigrationNotice.objects.order_by("pk").values()),
            Notification.objects.count(),
        )
        assert plan_migration_schedule(migration=migration, batch_size=1) == 0
        assert plan_migrations_run().scheduled == 0
        assert state == (
            list(Subscription.objects.order_by("pk").values()),
            list(PlanMigrationNotice.objects.order_by("pk").values()),
            Notification.objects.count(),
        )

    pending = dict(Subscription.objects.values_list("customer__external_id", "pending_plan_version"))
    assert pending == {"light": None, "heavy": v2.pk, "mid": v2.pk}
    migration.refresh_from_db()
    assert migration.status == MigrationStatus.DONE

    renewal = notice_of(customers["heavy"]).renews_at
    roll_and_run(renewal + timedelta(hours=1))

    on = dict(Subscription.objects.values_list("customer__external_id", "plan_version"))
    assert on == {"light": v1.pk, "heavy": v2.pk, "mid": v2.pk}
    assert Subscription.objects.get(customer=customers["light"]).grandfathered
    assert notice_of(customers["heavy"]).migrated_at == renewal
    assert notice_of(customers["light"]).migrated_at is None


def test_a_customers_own_change_of_plan_is_not_overruled(pro, make_plan):
    _, v2, customers, _ = pro
    migration = notify(v2)
    other = make_plan("other", base_fee="5.00")
    Subscription.objects.filter(customer=customers["mid"]).update(pending_plan_version=other)

    roll_and_run(migration.migrate_at + timedelta(hours=1))

    # Their own change applied at their renewal, before the date: the migration leaves them on it.
    subscription = Subscription.objects.get(customer=customers["mid"])
    assert (subscription.plan_version_id, subscription.pending_plan_version_id) == (other.pk, None)
    assert notice_of(customers["mid"]).skipped_reason == "Moved to another plan."


# --- The first-invoice safety net --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("new_fee", "credit"),
    [("109.00", None), ("110.00", None), ("111.00", D("11.00"))],
    ids=["109%", "110%", "111%"],
)
def test_the_safety_net_credits_a_first_bill_over_110_percent(make_plan, make_customer, new_fee, credit):
    make_plan("team", base_fee="100.00", prices=[CALLS_V1])
    customer = make_customer("team", "acme")
    admin_of(customer, "acme-admin")
    v2 = draft("team", base_fee=new_fee, prices=[CALLS_V1])
    migration = notify(v2)
    roll_and_run(migration.migrate_at + timedelta(hours=1))
    notice = notice_of(customer)
    roll_and_run(notice.renews_at + timedelta(hours=1))
    notice.refresh_from_db()
    first_end = Subscription.objects.get(customer=customer).current_period_end

    roll_and_run(first_end - timedelta(hours=1))  # the first period is still open
    assert notice_of(customer).safety_net_checked_at is None
    roll_and_run(first_end + timedelta(hours=1))
    roll_and_run(first_end + timedelta(hours=2))  # and again: never twice

    notice = notice_of(customer)
    assert (notice.first_period_old_total, notice.first_period_new_total) == (D("100.00"), D(new_fee))
    grants = CreditGrant.objects.filter(customer=customer)
    if credit is None:
        assert notice.safety_net_grant is None and not grants.exists()
        assert not Notification.objects.filter(kind=NotificationKind.PRICE_CHANGE_CREDIT).exists()
        return
    grant = grants.get()
    assert (grant.amount, grant.unit, notice.safety_net_grant_id) == (credit, "usd", grant.pk)
    entry = CreditLedgerEntry.objects.get(grant=grant)
    assert f"migration {migration.pk}" in entry.note and "Team v1 → v2" in entry.note
    told = Notification.objects.get(kind=NotificationKind.PRICE_CHANGE_CREDIT, customer=customer)
    assert "we credited you $11.00" in told.message
    mail.outbox.clear()
    customer_emails_send()
    assert [m.subject for m in mail.outbox] == ["Price change credit — Acme"]


def test_the_safety_net_percentage_is_a_setting(make_plan, make_customer, settings):
    settings.PRICE_CHANGE_SAFETY_NET_PERCENT = "5"
    make_plan("team", base_fee="100.00")
    customer = make_customer("team", "acme")
    v2 = draft("team", base_fee="106.00", prices=[])
    migration = notify(v2)
    roll_and_run(migration.migrate_at + timedelta(hours=1))
    roll_and_run(notice_of(customer).renews_at + timedelta(hours=1))
    roll_and_run(Subscription.objects.get(customer=customer).current_period_end + timedelta(hours=1))

    assert CreditGrant.objects.get(customer=customer).amount == D("6.00")


def test_the_safety_net_rates_the_first_periods_usage_under_both_versions(make_plan, make_customer):
    """v1: $20, 100 calls included then 10c; v2: $20, 50 included then 20c. 300 calls in the first period:
    v1 $20 + 200 × 10c = $40; v2 $20 + 250 × 20c = $70, 175%: credited $30."""
    make_plan("pro", base_fee="20.00", prices=[CALLS_V1])
    customer = make_customer("pro", "acme")
    v2 = draft("pro", base_fee="20.00", prices=[CALLS_V1 | {"included": "50", "unit_amount": "0.20"}])
    migration = notify(v2)
    roll_and_run(migration.migrate_at + timedelta(hours=1))
    renewal = notice_of(customer).renews_at
    roll_and_run(renewal + timedelta(hours=1))
    subscription = Subscription.objects.get(customer=customer)
    period_usage_at(customer, subscription.current_period_start, subscription.current_period_end, 300)

    roll_and_run(subscription.current_period_end + timedelta(hours=1))

    notice = notice_of(customer)
    assert (notice.first_period_old_total, notice.first_period_new_total) == (D("40.00"), D("70.00"))
    assert notice.safety_net_grant.amount == D("30.00")


def period_usage_at(customer, start, end, quantity):
    PeriodUsage.objects.create(
        customer=customer,
        meter=Meter.objects.get(key="api_call"),
        period_start=start,
        period_end=end,
        unit="usd",
        quantity=D(quantity),
    )


def test_a_customer_who_kept_their_plan_is_never_moved_nor_credited(pro):
    v1, v2, customers, _ = pro
    migration = notify(v2)
    price_change_choose(notice_id=notice_of(customers["light"]).pk, choice="keep", by="test")

    moment = migration.migrate_at + timedelta(hours=1)
    for _ in range(3):
        roll_and_run(moment)
        moment = Subscription.objects.get(customer=customers["light"]).current_period_end + timedelta(hours=1)

    assert Subscription.objects.get(customer=customers["light"]).plan_version_id == v1.pk
    assert not CreditGrant.objects.filter(customer=customers["light"]).exists()
    with time_machine.travel(moment), pytest.raises(PriceChangeClosed):
        price_change_choose(notice_id=notice_of(customers["heavy"]).pk, choice="keep", by="late")


# --- Concurrency -------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_clicks_at_once_record_one_choice(pro):
    """The email's two links clicked at once: one choice is recorded, the other is told it was made. Without
    the notice's row lock in ``price_change_choose`` both read "pending" and both report a change."""
    _, v2, customers, _ = pro
    notify(v2)
    notice_id = notice_of(customers["heavy"]).pk

    results = run_concurrently(
        8,
        lambda i: price_change_choose(notice_id=notice_id, choice=("keep", "accept")[i % 2], by=f"click {i}"),
    )

    changed = [result for result in results if result.changed]
    assert len(changed) == 1
    notice = notice_of(customers["heavy"])
    assert notice.chosen_by == changed[0].notice.chosen_by
    assert Subscription.objects.get(customer=customers["heavy"]).grandfathered == (notice.choice == "keep")


@pytest.mark.django_db(transaction=True)
def test_a_run_skips_the_customers_another_run_holds(pro):
    """While one worker holds a customer's notice, another run schedules the others without waiting for it
    (SKIP LOCKED), and a later run schedules the one left: each customer once. Without SKIP LOCKED the second
    run would wait for the first and this test would time out."""
    _, v2, customers, _ = pro
    migration = notify(v2)
    held = notice_of(customers["heavy"])

    with time_machine.travel(migration.migrate_at + timedelta(hours=1)):
        subscriptions_roll_periods_task()
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            with transaction.atomic():
                PlanMigrationNotice.objects.select_for_update().get(pk=held.pk)
                other_run = pool.submit(_in_own_connection, plan_migration_schedule, migration)
                try:
                    scheduled = other_run.result(timeout=10)
                except FuturesTimeout:
                    scheduled = "waited for the held row"
        finally:
            pool.shutdown(wait=True)  # after the held lock is released, so a waiting run can finish
        assert scheduled == 2
        assert notice_of(customers["heavy"]).scheduled_at is None
        assert plan_migration_schedule(migration=migration) == 1
        assert plan_migration_schedule(migration=migration) == 0

    assert Notification.objects.filter(kind=NotificationKind.PLAN_CHANGE_SCHEDULED).count() == 3
    assert set(Subscription.objects.values_list("pending_plan_version", flat=True)) == {v2.pk}


def _in_own_connection(schedule, migration):
    try:
        return schedule(migration=migration, batch_size=1)
    finally:
        connection.close()
