"""A price change that moves existing subscribers (``plans.PlanMigration``): notice, the customer's choice,
the move at renewal in batches, and the first-invoice safety net.

Each step is a write that is safe to run twice, driven by ``plan_migrations_run`` (a periodic task):

1. ``plan_migration_notices_create``: one ``PlanMigrationNotice`` per affected customer (a subscriber of an
   older version of the plan, not grandfathered), with its last three closed periods re-rated under both
   versions (the migration backtest), and an in-product notification. The emails go from
   ``billing_app.customer_emails`` (they carry the signed links of ``price_change_link_token``).
2. ``price_change_choose``: keep (grandfathered for good, never moved) or accept; once, until ``choose_by``.
3. ``plan_migration_schedule``: from the date, every customer who did not keep their version gets
   ``pending_plan_version``, which the period roll applies at their renewal and the Stripe sync puts in
   Stripe; in batches of rows locked with SKIP LOCKED, so two runs never schedule one customer twice.
4. ``plan_migration_moves_record``: the renewal that moved each customer, i.e. their first period on it.
5. ``plan_migration_safety_nets``: once that first period has closed, its usage rated under both versions;
   over ``PRICE_CHANGE_SAFETY_NET_PERCENT`` more, a one-time credit of the difference.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from core.errors import BillingError, NotFound
from core.money import format_money, round_money
from customers.models import (
    Customer,
    Notification,
    NotificationKind,
    Subscription,
    SubscriptionStatus,
)
from plans.models import MigrationStatus, PlanMigration, PlanVersion
from plans.selectors import version_spec
from usage.models import GrantKind, MigrationChoice, PeriodUsage, PlanMigrationNotice
from usage.selectors.price_changes import migration_preview
from usage.selectors.rating import period_dimension_mix, usage_bill
from usage.services import credit_grant_create

BATCH_SIZE = 200
LINK_SALT = "usage.plan-migration-choice"
CHOICES_BY_LINK = (MigrationChoice.KEEP, MigrationChoice.ACCEPT)


class PriceChangeLinkInvalid(BillingError):
    """A link that was not signed by us, or names no notice: forged, cut short, or for a deleted notice."""

    code = "price_change_link_invalid"
    http_status = 400


class PriceChangeClosed(BillingError):
    """The date to choose by has passed (the link expired), or the customer was not moved by this change."""

    code = "price_change_closed"
    http_status = 400


# --- 1. Notice ---------------------------------------------------------------------------------------


def affected_subscriptions(migration: PlanMigration) -> QuerySet[Subscription]:
    """Subscribers of the plan's other versions who were not promised their version for good."""
    target = migration.plan_version
    return (
        Subscription.objects.filter(plan_version__plan_id=target.plan_id, grandfathered=False)
        .exclude(plan_version_id=target.pk)
        .exclude(status=SubscriptionStatus.CANCELED)
    )


def plan_migration_notices_create(*, migration: PlanMigration, now: datetime | None = None) -> int:
    """A notice, with its backtest, for each affected customer not told yet; returns how many were new.

    A customer told late (after the migration was scheduled) still gets ``PRICE_CHANGE_NOTICE_DAYS`` to
    choose: their ``choose_by`` is that far from their notice when the migration's date is nearer.
    """
    now = now or timezone.now()
    told = PlanMigrationNotice.objects.filter(migration=migration).values_list("customer_id", flat=True)
    subscriptions = {
        s.customer.external_id: s
        for s in affected_subscriptions(migration).exclude(customer_id__in=told).select_related("customer")
    }
    if not subscriptions:
        return 0
    target = migration.plan_version
    preview = migration_preview(version=target, now=now)
    backtests = {row.customer: row for row in preview.customers}
    choose_by = max(migration.migrate_at, now + timedelta(days=settings.PRICE_CHANGE_NOTICE_DAYS))
    created = 0
    for external_id, subscription in sorted(subscriptions.items()):
        backtest = backtests.get(external_id)
        with transaction.atomic():
            notice, new = PlanMigrationNotice.objects.get_or_create(
                migration=migration,
                customer=subscription.customer,
                defaults={
                    "from_version_id": subscription.plan_version_id,
                    "created_at": now,
                    "choose_by": choose_by,
                    "periods": backtest.periods if backtest else 0,
                    "usage": {k: f"{v.normalize():f}" for k, v in backtest.usage.items()} if backtest else {},
                    "old_total": backtest.old_total if backtest else None,
                    "new_total": backtest.new_total if backtest else None,
                    # Moving a customer whose usage the new version refuses (a model it has no rate for)
                    # would stop their product: they are left where they are, for an operator to decide.
                    "skipped_reason": ""
                    if backtest
                    else "The new version cannot price this customer's usage; not moved.",
                },
            )
            if not new:
                continue
            created += 1
            if notice.skipped_reason:
                continue
            Notification.objects.get_or_create(
                customer=subscription.customer,
                kind=NotificationKind.PRICE_CHANGE_NOTICE,
                plan_migration=migration,
                defaults={
                    "period_start": subscription.current_period_start,
                    "message": price_change_headline(notice),
                },
            )
    return created


def price_change_headline(notice: PlanMigrationNotice) -> str:
    """One sentence: what changes, when, and what the last periods would have cost."""
    target = notice.migration.plan_version
    currency = target.currency
    text = (
        f"{target.plan.name} prices change: your plan moves to the new version at your first renewal from "
        f"{notice.choose_by:%b %-d, %Y}, unless you keep your current plan."
    )
    if notice.periods and notice.old_total is not None and notice.new_total is not None:
        text += (
            f" Your last {notice.periods} closed period{'s' if notice.periods != 1 else ''} cost "
            f"{format_money(notice.old_total, currency)}; on the new version they would have cost "
            f"{format_money(notice.new_total, currency)}."
        )
    return text


# --- 2. The choice -----------------------------------------------------------------------------------


def price_change_link_token(*, notice: PlanMigrationNotice, choice: str) -> str:
    """The signed token of a one-click link: which notice, which choice. It expires with ``choose_by``
    (checked when used, so it needs no clock of its own) and works once (the choice is set once)."""
    return signing.dumps([notice.pk, choice], salt=LINK_SALT, compress=False)


def price_change_link_read(token: str) -> tuple[PlanMigrationNotice, str]:
    """The notice and choice a token names, or ``PriceChangeLinkInvalid``."""
    try:
        notice_id, choice = signing.loads(token, salt=LINK_SALT)
    except (signing.BadSignature, ValueError, TypeError):
        raise PriceChangeLinkInvalid(
            "This link is not valid. Open the newest email, or your plan page."
        ) from None
    if choice not in CHOICES_BY_LINK or type(notice_id) is not int:
        raise PriceChangeLinkInvalid("This link is not valid. Open the newest email, or your plan page.")
    notice = (
        PlanMigrationNotice.objects.select_related(
            "migration__plan_version__plan", "customer", "from_version"
        )
        .filter(pk=notice_id)
        .first()
    )
    if notice is None:
        raise PriceChangeLinkInvalid("This price change no longer exists.")
    return notice, choice


@dataclass(frozen=True)
class ChoiceResult:
    notice: PlanMigrationNotice
    changed: bool  # False: the choice had been made before, and is left as it was


@transaction.atomic
def price_change_choose(
    *,
    notice_id: int,
    choice: str,
    by: str,
    customer: Customer | None = None,
    now: datetime | None = None,
) -> ChoiceResult:
    """Record a customer's choice, once. ``keep`` grandfathers their subscription for good: no migration
    moves it. ``accept`` moves them at their first renewal from the date, as everyone who does not keep.

    ``customer`` (from a logged-in page) must own the notice. A second choice changes nothing and returns the
    first (``changed`` False); after ``choose_by`` nothing can be chosen (``PriceChangeClosed``).
    """
    now = now or timezone.now()
    if choice not in CHOICES_BY_LINK:
        raise PriceChangeLinkInvalid(f"Choose {' or '.join(CHOICES_BY_LINK)}.", param="choice")
    # Locked so that two clicks at once (the email's link and the plan page) record one choice.
    notice = (
        PlanMigrationNotice.objects.select_for_update(of=("self",))
        .select_related("migration__plan_version__plan", "customer", "from_version")
        .filter(pk=notice_id)
        .first()
    )
    if notice is None or (customer is not None and notice.customer_id != customer.pk):
        raise NotFound("No such price change for this account.", param="notice")
    if notice.choice != MigrationChoice.PENDING:
        return ChoiceResult(notice=notice, changed=False)
    if notice.skipped_reason or now >= notice.choose_by:
        raise PriceChangeClosed(
            f"The time to choose ended on {notice.choose_by:%b %-d, %Y}.", choose_by=notice.choose_by
        )
    notice.choice, notice.chosen_at, notice.chosen_by = choice, now, by[:200]
    notice.save(update_fields=["choice", "chosen_at", "chosen_by"])
    if choice == MigrationChoice.KEEP:
        subscription = Subscription.objects.select_for_update().filter(customer_id=notice.customer_id).first()
        if subscription is not None:
            subscription.grandfathered = True
            if subscription.pending_plan_version_id == notice.migration.plan_version_id:
                subscription.pending_plan_version = None
            subscription.save(update_fields=["grandfathered", "pending_plan_version"])
    return ChoiceResult(notice=notice, changed=True)


# --- 3. The move at renewal, in batches --------------------------------------------------------------


def _due_for_scheduling(migration: PlanMigration, now: datetime) -> QuerySet[PlanMigrationNotice]:
    return PlanMigrationNotice.objects.filter(
        migration=migration,
        choice__in=[MigrationChoice.PENDING, MigrationChoice.ACCEPT],
        scheduled_at__isnull=True,
        skipped_reason="",
        choose_by__lte=now,
    )


def plan_migration_schedule(
    *, migration: PlanMigration, now: datetime | None = None, batch_size: int = BATCH_SIZE
) -> int:
    """From the migration's date, set ``pending_plan_version`` on each customer who did not keep their
    version, ``batch_size`` at a time, each batch one transaction. Returns how many were set to move.

    Notices are claimed with SKIP LOCKED, and each is marked scheduled or skipped in the batch that claimed
    it, so a second run (or one running beside) finds nothing left and changes nothing.
    """
    now = now or timezone.now()
    if now < migration.migrate_at:
        return 0
    if migration.status == MigrationStatus.SCHEDULED:
        PlanMigration.objects.filter(pk=migration.pk, status=MigrationStatus.SCHEDULED).update(
            status=MigrationStatus.MIGRATING
        )
    target = migration.plan_version
    scheduled = 0
    while True:
        with transaction.atomic():
            batch = list(
                _due_for_scheduling(migration, now)
                .select_for_update(skip_locked=True)
                .order_by("pk")[:batch_size]
            )
            if not batch:
                break
            for notice in batch:
                scheduled += _notice_schedule(notice, target, now)
    if (
        not affected_subscriptions(migration)
        .exclude(
            customer_id__in=PlanMigrationNotice.objects.filter(migration=migration).values("customer_id")
        )
        .exists()
        and not PlanMigrationNotice.objects.filter(
            migration=migration,
            choice__in=[MigrationChoice.PENDING, MigrationChoice.ACCEPT],
            scheduled_at__isnull=True,
            skipped_reason="",
        ).exists()
    ):
        PlanMigration.objects.filter(pk=migration.pk).update(status=MigrationStatus.DONE)
    return scheduled


def _notice_schedule(notice: PlanMigrationNotice, target: PlanVersion, now: datetime) -> int:
    """Set one customer to move at their renewal, or record why not. Under the notice's lock."""
    # The subscription's lock: the customer's own plan change (usage.services.subscription_plan_choose) and
    # the period roll take it too, so none of them overwrites the other's pending version.
    subscription = (
        Subscription.objects.select_for_update(of=("self",))
        .select_related("plan_version")
        .filter(customer_id=notice.customer_id)
        .first()
    )
    if subscription is None or (reason := _not_movable_because(subscription, target)):
        notice.skipped_reason = "No longer subscribed." if subscription is None else reason
        notice.save(update_fields=["skipped_reason"])
        return 0
    subscription.pending_plan_version = target
    subscription.save(update_fields=["pending_plan_version"])
    renews_at = subscription.current_period_end
    if renews_at <= now:
        # A period the roll has not closed yet: it moves the subscription into the period containing now.
        renews_at = subscription.period_containing(now)[0]
    notice.scheduled_at, notice.renews_at = now, renews_at
    notice.save(update_fields=["scheduled_at", "renews_at"])
    Notification.objects.get_or_create(
        customer_id=notice.customer_id,
        kind=NotificationKind.PLAN_CHANGE_SCHEDULED,
        plan_migration=notice.migration,
        defaults={
            "period_start": subscription.current_period_start,
            "message": f"Your plan moves to the new {target.plan.name} prices at your renewal on "
            f"{max(renews_at, now):%b %-d, %Y}.",
        },
    )
    return 1


def _not_movable_because(subscription: Subscription, target: PlanVersion) -> str:
    """Why a subscription is left where it is ("" when it may move): the customer's own decisions win."""
    if subscription.status == SubscriptionStatus.CANCELED:
        return "No longer subscribed."
    if subscription.plan_version_id == target.pk:
        return "Already on the new version (a change of their own)."
    if subscription.plan_version.plan_id != target.plan_id:
        return "Moved to another plan."
    if subscription.grandfathered:
        return "Grandfathered: keeps their version."
    if subscription.pending_plan_version_id not in (None, target.pk):
        return "A change of their own is scheduled for the renewal."
    return ""


# --- 4. The renewal that moved them ------------------------------------------------------------------


def plan_migration_moves_record(*, now: datetime | None = None) -> int:
    """Record, for each customer set to move, the renewal that moved them (their first period on the new
    version); or that they changed their plan before it. Returns how many moved."""
    now = now or timezone.now()
    moved = 0
    waiting = PlanMigrationNotice.objects.filter(
        scheduled_at__isnull=False, migrated_at__isnull=True, skipped_reason="", renews_at__lte=now
    ).select_related("migration")
    for notice in waiting:
        subscription = Subscription.objects.filter(customer_id=notice.customer_id).first()
        target_id = notice.migration.plan_version_id
        if subscription is None:
            notice.skipped_reason = "No longer subscribed."
        elif subscription.pending_plan_version_id == target_id:
            continue  # the renewal has not been rolled yet
        elif (
            subscription.plan_version_id == target_id
            and notice.renews_at is not None
            and subscription.current_period_start >= notice.renews_at
        ):
            notice.migrated_at = notice.renews_at
            moved += 1
        else:
            notice.skipped_reason = "Changed their plan before the renewal."
        notice.save(update_fields=["migrated_at", "skipped_reason"])
    return moved


# --- 5. The first-invoice safety net -----------------------------------------------------------------


@dataclass(frozen=True)
class SafetyNetResult:
    notice: PlanMigrationNotice
    credited: Decimal | None  # the credit granted, None when the first period was within the margin


def safety_net_percent() -> Decimal:
    return Decimal(settings.PRICE_CHANGE_SAFETY_NET_PERCENT)


def plan_migration_safety_nets(*, now: datetime | None = None) -> list[SafetyNetResult]:
    """For each migrated customer whose first period on the new version has closed: that period's usage
    rated under the old version and the new; when the new exceeds the old by more than
    ``PRICE_CHANGE_SAFETY_NET_PERCENT`` %, a one-time credit of the whole difference, in the customer's
    currency, with a notification. Each notice is checked once (claimed under its lock), and the grant's
    idempotency key names the migration, so no customer is credited twice for one migration."""
    now = now or timezone.now()
    results = []
    candidates = PlanMigrationNotice.objects.filter(
        migrated_at__isnull=False, migrated_at__lt=now, safety_net_checked_at__isnull=True
    ).values_list("pk", flat=True)
    for notice_id in list(candidates):
        result = _safety_net_check(notice_id, now)
        if result is not None:
            results.append(result)
    return results


@transaction.atomic
def _safety_net_check(notice_id: int, now: datetime) -> SafetyNetResult | None:
    notice = (
        PlanMigrationNotice.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("migration__plan_version__plan", "from_version", "customer")
        .filter(pk=notice_id, safety_net_checked_at__isnull=True)
        .first()
    )
    if notice is None or notice.migrated_at is None:
        return None  # checked meanwhile, or being checked by another run
    subscription = (
        Subscription.objects.select_related("plan_version").filter(customer=notice.customer).first()
    )
    target = notice.migration.plan_version
    if subscription is None or subscription.plan_version_id != target.pk:
        notice.safety_net_checked_at = now
        notice.skipped_reason = "Left the new version during the first period: its bill was not the new one."
        notice.save(update_fields=["safety_net_checked_at", "skipped_reason"])
        return None
    start, end = subscription.period_containing(notice.migrated_at)
    if now < end:
        return None  # the first period is still open
    customer = notice.customer
    quantities = dict(
        PeriodUsage.objects.filter(customer=customer, period_start=start).values_list(
            "meter__key", "quantity"
        )
    )
    mix = period_dimension_mix(customer=customer, period_start=start)
    old = usage_bill(
        version_spec(notice.from_version), quantities, mix, notice.from_version.credit_unit_amount
    )
    new = usage_bill(version_spec(target), quantities, mix, target.credit_unit_amount)
    notice.safety_net_checked_at = now
    notice.first_period_old_total, notice.first_period_new_total = old, new
    credited = None
    if old is not None and new is not None and new > old * (1 + safety_net_percent() / 100):
        credited = round_money(new - old, customer.currency)
        grant, _ = credit_grant_create(
            customer=customer,
            amount=credited,
            kind=GrantKind.PROMOTIONAL,
            unit=customer.currency,
            # The ledger row's note: which migration, and why.
            description=f"Price change safety net: {target.plan.name} v{notice.from_version.number} → "
            f"v{target.number} (migration {notice.migration_id}), first period {start:%Y-%m-%d}",
            idempotency_key=f"plan-migration:{notice.migration_id}:safety-net",
            now=now,
        )
        notice.safety_net_grant = grant
        Notification.objects.get_or_create(
            customer=customer,
            kind=NotificationKind.PRICE_CHANGE_CREDIT,
            plan_migration=notice.migration,
            defaults={
                "period_start": start,
                "message": f"Your first period on the new {target.plan.name} prices came to "
                f"{format_money(new, customer.currency)}, more than {safety_net_percent().normalize():f}% "
                f"above the {format_money(old, customer.currency)} your previous version would have "
                f"charged: we credited you {format_money(credited, customer.currency)}.",
            },
        )
    notice.save(
        update_fields=[
            "safety_net_checked_at",
            "first_period_old_total",
            "first_period_new_total",
            "safety_net_grant",
        ]
    )
    return SafetyNetResult(notice=notice, credited=credited)


# --- The periodic run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationRunReport:
    notices_created: int
    scheduled: int
    moved: int
    credited: int


def plan_migrations_run(*, now: datetime | None = None) -> MigrationRunReport:
    """Every step for every migration not done; safe to run twice or beside another run."""
    now = now or timezone.now()
    notices = scheduled = 0
    for migration in PlanMigration.objects.exclude(status=MigrationStatus.DONE).select_related(
        "plan_version__plan"
    ):
        notices += plan_migration_notices_create(migration=migration, now=now)
        scheduled += plan_migration_schedule(migration=migration, now=now)
    moved = plan_migration_moves_record(now=now)
    credited = sum(1 for result in plan_migration_safety_nets(now=now) if result.credited is not None)
    return MigrationRunReport(notices_created=notices, scheduled=scheduled, moved=moved, credited=credited)


def plan_migration_progress(migration: PlanMigration) -> dict[str, int]:
    """Counts for operators: told, kept, accepted, not chosen, set to move, moved, skipped, credited."""
    notices = PlanMigrationNotice.objects.filter(migration=migration)
    counts = notices.aggregate(
        notified=_count(Q(notice_sent_at__isnull=False)),
        kept=_count(Q(choice=MigrationChoice.KEEP)),
        accepted=_count(Q(choice=MigrationChoice.ACCEPT)),
        pending=_count(Q(choice=MigrationChoice.PENDING)),
        scheduled=_count(Q(scheduled_at__isnull=False)),
        migrated=_count(Q(migrated_at__isnull=False)),
        skipped=_count(~Q(skipped_reason="")),
        credited=_count(Q(safety_net_grant__isnull=False)),
    )
    counts["customers"] = notices.count()
    return counts


def _count(condition: Q) -> Count:
    return Count("pk", filter=condition)
