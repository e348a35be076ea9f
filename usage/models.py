"""The usage ledger, rollups, reservations, wallets, credit grants and the credit ledger.

Invariants (checked by ``manage.py ledger_check`` and, where the database can, by constraints):
- a usage event and a credit ledger entry are never updated or deleted (PostgreSQL triggers);
- ``CreditGrant.remaining`` and ``CustomerBalance.wallet_balance`` equal the sums of their ledger rows;
- ``PeriodUsage`` and ``DailyUsageRollup`` totals equal the sums of their events.
"""

import json
import math
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import models
from django.db.models import Expression, F, Q

from customers.models import Customer, Member
from plans.models import QUANTITY, RATE, Meter

ZERO = Decimal(0)


class PropertiesEncoder(json.JSONEncoder):
    """Event and reservation properties as JSON; the API reads JSON numbers as Decimal.

    Properties describe the work (model, action, temperature...), they are not amounts: a
    decimal goes back to a JSON number, exact to 15 significant digits.
    """

    def default(self, o: Any) -> Any:
        if isinstance(o, Decimal):
            number = float(o)
            if not math.isfinite(number):
                raise ValueError(f"properties hold a number too large to store: {o}")
            return number
        return super().default(o)


class CustomerBalance(models.Model):
    """The per-customer row that every write moving usage or money locks first (see ``locks.py``).

    ``wallet_balance`` is a cache of the wallet's ledger rows, in the customer's currency.
    """

    customer = models.OneToOneField(
        Customer, primary_key=True, on_delete=models.CASCADE, related_name="balance"
    )
    currency = models.CharField(max_length=3)
    wallet_balance = models.DecimalField(**RATE, default=ZERO)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(wallet_balance__gte=0), name="wallet_balance_non_negative"),
        ]

    def __str__(self) -> str:
        return f"Balance of {self.customer_id}"


class GrantKind(models.TextChoices):
    PURCHASED = "purchased", "Purchased"
    PROMOTIONAL = "promotional", "Promotional"


# The order usage draws grants in: lower priority number first, then the earliest expiry (a grant that never
# expires last), then the oldest. The engine's read, the wallet page and the admin all list grants in it.
GRANT_DRAW_ORDER = ("priority", F("expires_at").asc(nulls_last=True), "id")


class CreditGrantQuerySet(models.QuerySet["CreditGrant"]):
    def in_force(self, now: datetime | Expression) -> "CreditGrantQuerySet":
        """The grants in effect at ``now``, not expired or voided, whatever they have left: where a
        give-back (volume pricing reaching a cheaper tier) can return credits."""
        return self.filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now),
            expired_at__isnull=True,
            effective_at__lte=now,
        )

    def usable(self, now: datetime | Expression) -> "CreditGrantQuerySet":
        """The grants usage may draw from at ``now``: in force and not used up.

        ``now`` may be an expression, for a statement compiled once and run with each request's time.
        """
        return self.in_force(now).filter(remaining__gt=0)

    def in_draw_order(self) -> "CreditGrantQuerySet":
        return self.order_by(*GRANT_DRAW_ORDER)


class CreditGrant(models.Model):
    """Credits granted to a customer, consumed in priority order (lower first) then earliest expiry.

    ``unit`` is ``credits`` (a custom pricing unit) or the currency code for a monetary credit.
    ``remaining`` caches the sum of this grant's ledger rows.
    """

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="credit_grants")
    kind = models.CharField(max_length=12, choices=GrantKind.choices)
    unit = models.CharField(max_length=10)
    amount = models.DecimalField(**RATE)
    remaining = models.DecimalField(**RATE)
    priority = models.PositiveSmallIntegerField(default=50)
    effective_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(
        null=True, blank=True, help_text="When the unused remainder was voided."
    )
    expiry_announced_at = models.DateTimeField(
        null=True, blank=True, help_text="When its coming expiry was announced (credits.expiring)."
    )
    description = models.CharField(max_length=200, blank=True)
    # NULL, not "", when absent: grants without a key must not collide on the unique constraint.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    created_at = models.DateTimeField(auto_now_add=True)

    objects = CreditGrantQuerySet.as_manager()

    class Meta:
        ordering = GRANT_DRAW_ORDER
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="credit_grant_amount_positive"),
            models.CheckConstraint(
                condition=Q(remaining__gte=0) & Q(remaining__lte=models.F("amount")),
                name="credit_grant_remaining_ok",
            ),
            models.UniqueConstraint(
                fields=["customer", "idempotency_key"], name="credit_grant_idempotency_unique"
            ),
        ]
        indexes = [models.Index(fields=["customer", "expired_at", "priority", "expires_at"])]

    def __str__(self) -> str:
        return f"{self.remaining}/{self.amount} {self.unit} ({self.kind})"

    def has_ended(self, now: datetime) -> bool:
        """Voided, or past its expiry: nothing can be drawn, even before the expiry job voids the rest."""
        return self.expired_at is not None or (self.expires_at is not None and self.expires_at <= now)

    def remaining_at(self, now: datetime) -> Decimal:
        """What is left to draw at ``now``: ``remaining``, or nothing once the grant has ended."""
        return ZERO if self.has_ended(now) else self.remaining


class LedgerEntryKind(models.TextChoices):
    GRANT = "grant", "Grant"
    TOPUP = "topup", "Wallet top-up"
    DRAWDOWN = "drawdown", "Draw-down"
    EXPIRY = "expiry", "Expiry"
    REFUND = "refund", "Refund"
    ADJUSTMENT = "adjustment", "Adjustment"


class CreditLedgerEntry(models.Model):
    """One immutable change to a grant (``grant`` set) or to the wallet (``grant`` empty).

    ``amount`` is signed: positive adds to the balance, negative takes from it.
    """

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="credit_ledger")
    grant = models.ForeignKey(
        CreditGrant, null=True, blank=True, on_delete=models.PROTECT, related_name="entries"
    )
    kind = models.CharField(max_length=12, choices=LedgerEntryKind.choices)
    amount = models.DecimalField(**RATE)
    unit = models.CharField(max_length=10)
    # No database constraint: the usage ledger is partitioned by month and its primary key is (id, timestamp),
    # so nothing can reference ``id`` alone. ``ledger_check`` proves every reference instead.
    usage_event = models.ForeignKey(
        "UsageEvent",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="ledger_entries",
        db_constraint=False,
    )
    reservation = models.ForeignKey(
        "Reservation", null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_entries"
    )
    note = models.CharField(max_length=200, blank=True)
    # The payment this row is the money of, e.g. ``checkout:cs_…`` or ``payment_intent:pi_…``: unique per
    # customer, so a payment told to us twice (a webhook and a look-up, two deliveries) credits once. NULL for
    # rows no payment made.
    reference = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "credit ledger entries"
        indexes = [
            models.Index(fields=["customer", "-created_at"]),
            # The API's ledger list: one customer's entries, newest (by id) first, a page at a time.
            models.Index(fields=["customer", "-id"]),
        ]
        constraints = [
            models.UniqueConstraint(fields=["customer", "reference"], name="credit_ledger_reference_unique"),
        ]


class CorrectionFlag(models.TextChoices):
    """A limit that usage added by a correction went past. A correction is never refused (the usage happened);
    it is recorded and flagged instead."""

    ENTITLEMENT_LIMIT = "entitlement_limit", "Past the plan's cap"
    HARD_LIMIT = "hard_limit", "Past the customer's hard limit"
    METER_LIMIT = "meter_limit", "Past the customer's own limit on the meter"
    OVERAGE_BLOCKED = "overage_blocked", "Billed as overage although overage is blocked"


class UsageEvent(models.Model):
    """One metered event, as received. Append-only: a correction is a new event pointing at the old.

    The ``*_amount`` fields record how the event's cost was covered, in ``cost_unit`` (the price's
    unit: the plan currency or credits): ``cost = credits_amount + wallet_amount + overage_amount``.
    """

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="usage_events")
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="usage_events")
    member = models.ForeignKey(
        Member, null=True, blank=True, on_delete=models.PROTECT, related_name="usage_events"
    )
    idempotency_key = models.CharField(max_length=255)
    quantity = models.DecimalField(**QUANTITY)
    properties = models.JSONField(default=dict, blank=True, encoder=PropertiesEncoder)
    timestamp = models.DateTimeField()
    received_at = models.DateTimeField()
    period_start = models.DateTimeField(help_text="Start of the billing period the event counts in.")
    # The rollup keys: the ``action`` property and the value of the price's dimension, if any.
    action = models.CharField(max_length=120, blank=True)
    dimension_value = models.CharField(max_length=120, blank=True)
    billable = models.BooleanField(default=True, help_text="False for cache hits: recorded, never invoiced.")
    # One event per reservation, though the partitioned table cannot hold a unique index on this column alone
    # (its unique keys must include ``timestamp``): a commit records its event under the key
    # ``reservation:<id>``, unique per customer in ``UsageEventKey``, under the customer's lock and after
    # checking the hold is still held. ``ledger_check`` proves it. The database keeps a plain index.
    reservation = models.OneToOneField(
        "Reservation", null=True, blank=True, on_delete=models.PROTECT, related_name="usage_event"
    )
    corrects = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="corrections",
        db_constraint=False,  # see ``CreditLedgerEntry.usage_event``
    )
    cost_unit = models.CharField(max_length=10, blank=True)
    cost = models.DecimalField(**RATE, default=ZERO)
    included_quantity = models.DecimalField(**QUANTITY, default=ZERO)
    credits_amount = models.DecimalField(**RATE, default=ZERO)
    wallet_amount = models.DecimalField(**RATE, default=ZERO)
    overage_amount = models.DecimalField(**RATE, default=ZERO)
    # What the client sent under ``idempotency_key`` (``usage.validation``), so the key sent again with other
    # content is refused, not taken for a duplicate. NULL for events recorded before it was kept and for
    # reservation commits, whose key is the reservation's.
    fingerprint = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001
    # The money the wallet paid for this event (negative: given back), as the wallet's ledger rows took it.
    # A credit-priced share is converted on the period's running total (``PlanTerms.money_of_running_total``),
    # so it is recorded here rather than recomputed. None on events recorded before it was kept.
    wallet_money = models.DecimalField(**RATE, null=True, blank=True)
    # Of ``credits_amount`` on a credit-priced event, the credits monetary grants paid for, and their money.
    money_grant_credits = models.DecimalField(**RATE, default=ZERO, db_default=ZERO)
    money_grant_amount = models.DecimalField(**RATE, default=ZERO, db_default=ZERO)
    # What serving the event cost us, in the operator's currency (``OPERATOR_CURRENCY``): its
    # ``properties.cost`` when sent, else quantity × the rate in force at ``timestamp``
    # (``plans.serving_costs``). Not ``cost``, which is what the customer is charged.
    serving_cost = models.DecimalField(**RATE, default=ZERO, db_default=ZERO)
    # On a correction (``corrects`` set): why it was made and who made it (an API key or a staff user), and
    # the limits the usage it added went past (``CorrectionFlag`` values, comma-separated), for the audit.
    correction_reason = models.CharField(max_length=500, blank=True, default="", db_default="")
    corrected_by = models.CharField(max_length=200, blank=True, default="", db_default="")
    correction_flags = models.CharField(max_length=200, blank=True, default="", db_default="")

    class Meta:
        ordering = ["-timestamp", "-id"]
        # (customer, idempotency_key) is unique through ``UsageEventKey``: a partitioned table's unique keys
        # must include the partition key, and that one must hold across all months.
        constraints = [
            # Usage is never negative; only a correction may take units back (its quantity is the difference).
            models.CheckConstraint(
                condition=Q(quantity__gte=0) | Q(corrects__isnull=False),
                name="usage_event_quantity_non_negative_unless_correction",
            ),
        ]
        indexes = [
            models.Index(fields=["customer", "meter", "period_start"]),
            models.Index(fields=["customer", "received_at"]),
            # The API's event list, newest (by id) first a page at a time, of all meters or of one.
            models.Index(fields=["customer", "-id"]),
            models.Index(fields=["customer", "meter", "-id"]),
        ]

    def __str__(self) -> str:
        # Read in admin's breadcrumbs and lists: the quantity as a number, not at the column's six decimals.
        quantity = "?" if self.quantity is None else f"{Decimal(self.quantity).normalize():f}"
        return f"Event {self.pk}: {quantity} ({self.idempotency_key})"


class UsageEventKey(models.Model):
    """The idempotency key of every usage event ever recorded: what keeps ``(customer, idempotency_key)``
    unique across the monthly partitions of the usage ledger (``docs/scaling.md``).

    Written by the database, not by the app: a statement-level trigger on ``usage_usageevent`` inserts the
    keys of every row a statement inserted (COPY in ingest, the ORM, hand-written SQL alike), in the same
    transaction, so a duplicate fails the event's own insert. Append-only like the ledger, and kept when a
    partition is detached, so a key stays taken after its event is archived. ``timestamp`` is the event's:
    it names the partition to read the event from.
    """

    event = models.OneToOneField(
        UsageEvent,
        primary_key=True,
        on_delete=models.DO_NOTHING,
        related_name="key",
        db_constraint=False,  # the ledger is partitioned: see ``CreditLedgerEntry.usage_event``
    )
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="+")
    idempotency_key = models.CharField(max_length=255)
    timestamp = models.DateTimeField()

    class Meta:
        constraints = [
            # The name the events table's constraint had: a duplicate reads the same in logs and errors.
            models.UniqueConstraint(
                fields=["customer", "idempotency_key"], name="usage_event_idempotency_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id}/{self.idempotency_key} → event {self.event_id}"


class DetachedUsagePartition(models.Model):
    """A month of the usage ledger detached by retention (``USAGE_EVENT_RETENTION_MONTHS``).

    The table stays in the database, outside the ledger, with its rows, until the operator archives and
    drops it. Periods that started before ``range_end`` are no longer proved by ``ledger_check``.
    """

    table_name = models.CharField(max_length=63, unique=True)
    range_start = models.DateTimeField()
    range_end = models.DateTimeField()
    event_count = models.PositiveBigIntegerField()
    detached_at = models.DateTimeField()

    class Meta:
        ordering = ["range_start"]

    def __str__(self) -> str:
        return self.table_name


class PeriodUsage(models.Model):
    """Running totals of one meter for one customer and billing period: what rating and limits read.

    ``quantity`` counts billable units only (cache hits are in ``non_billable_quantity``), because
    the included allowance and the price tiers apply to billable units.
    """

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="period_usage")
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="period_usage")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    unit = models.CharField(max_length=10, blank=True)
    quantity = models.DecimalField(**QUANTITY, default=ZERO)
    non_billable_quantity = models.DecimalField(**QUANTITY, default=ZERO)
    event_count = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(**RATE, default=ZERO)
    included_quantity = models.DecimalField(**QUANTITY, default=ZERO)
    credits_amount = models.DecimalField(**RATE, default=ZERO)
    wallet_amount = models.DecimalField(**RATE, default=ZERO)
    overage_amount = models.DecimalField(**RATE, default=ZERO)
    # The serving cost of all the period's events, cache hits included, in the operator's currency.
    serving_cost = models.DecimalField(**RATE, default=ZERO, db_default=ZERO)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["customer", "meter", "period_start"], name="period_usage_unique"),
        ]


class DailyUsageRollup(models.Model):
    """Daily totals per (customer, meter, member, action, dimension value): what pages read."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="daily_rollups")
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="daily_rollups")
    member = models.ForeignKey(
        Member, null=True, blank=True, on_delete=models.CASCADE, related_name="daily_rollups"
    )
    action = models.CharField(max_length=120, blank=True)
    dimension_value = models.CharField(max_length=120, blank=True)
    day = models.DateField()
    period_start = models.DateTimeField()
    quantity = models.DecimalField(**QUANTITY, default=ZERO)
    billable_quantity = models.DecimalField(**QUANTITY, default=ZERO)
    overage_quantity = models.DecimalField(**QUANTITY, default=ZERO)
    event_count = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(**RATE, default=ZERO)
    overage_amount = models.DecimalField(**RATE, default=ZERO)
    # The serving cost of the day's events, cache hits included, in the operator's currency.
    serving_cost = models.DecimalField(**RATE, default=ZERO, db_default=ZERO)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "meter", "member", "action", "dimension_value", "period_start", "day"],
                name="daily_rollup_unique_in_period",
                nulls_distinct=False,
            ),
        ]
        indexes = [models.Index(fields=["customer", "period_start", "day"])]


class ReservationStatus(models.TextChoices):
    HELD = "held", "Held"
    COMMITTED = "committed", "Committed"
    RELEASED = "released", "Released"
    EXPIRED = "expired", "Expired"


class ReservationQuerySet(models.QuerySet["Reservation"]):
    def active(self, now: datetime | Expression) -> "ReservationQuerySet":
        """The holds that count at ``now``: held and not past their expiry, whether or not the expiry job
        has marked them yet. A hold of cached work (``properties.cached``) holds nothing: cache hits are
        never counted, toward caps, allowance or spend."""
        return self.filter(status=ReservationStatus.HELD, expires_at__gt=now).exclude(
            properties__contains={"cached": True}
        )


class Reservation(models.Model):
    """A hold on what a customer may use, taken before costly work and settled after it.

    While ``held`` and not past ``expires_at``, its quantity and amounts count against the
    allowance, grants, wallet and limits, so concurrent reservations cannot overspend.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="reservations")
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="reservations")
    member = models.ForeignKey(
        Member, null=True, blank=True, on_delete=models.PROTECT, related_name="reservations"
    )
    idempotency_key = models.CharField(max_length=255)
    properties = models.JSONField(default=dict, blank=True, encoder=PropertiesEncoder)
    quantity = models.DecimalField(**QUANTITY)
    unit = models.CharField(max_length=10, blank=True)
    # The allowance the hold pins, in meter units: no other usage may take it until the hold settles.
    held_included = models.DecimalField(**QUANTITY, default=ZERO, db_default=ZERO)
    held_cost = models.DecimalField(**RATE, default=ZERO)
    held_credits = models.DecimalField(**RATE, default=ZERO)
    held_wallet = models.DecimalField(**RATE, default=ZERO)
    held_overage = models.DecimalField(**RATE, default=ZERO)
    status = models.CharField(
        max_length=10, choices=ReservationStatus.choices, default=ReservationStatus.HELD
    )
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField()
    settled_at = models.DateTimeField(null=True, blank=True)
    committed_quantity = models.DecimalField(**QUANTITY, null=True, blank=True)
    commit_idempotency_key = models.CharField(max_length=255, blank=True)

    objects = ReservationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "idempotency_key"], name="reservation_idempotency_unique"
            ),
            models.CheckConstraint(condition=Q(quantity__gt=0), name="reservation_quantity_positive"),
        ]
        indexes = [models.Index(fields=["customer", "status", "expires_at"])]


class OutboxStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    TOO_OLD = "too_old", "Too old for Stripe: invoice manually"


class StripeUsageOutbox(models.Model):
    """Post-paid overage Stripe must bill, written in the transaction that accepted the usage.

    Ingest adds one row per batch for each (customer, meter, dimension value, hour) that had
    overage, so a 1,000-event batch writes a handful of rows. A Celery job drains pending rows
    (``select_for_update(skip_locked=True)``), sends them as meter events with deterministic
    identifiers and marks them sent. Included allowance, credits and wallet are settled locally and
    never appear here; a give-back of overage already queued (a negative ``amount``) does. Rows are
    never deleted: they are the record of what Stripe was told.
    """

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="stripe_outbox")
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="stripe_outbox")
    dimension_value = models.CharField(max_length=120, blank=True)
    period_start = models.DateTimeField()
    window_start = models.DateTimeField(help_text="The hour the usage happened in (UTC).")
    # See ``CreditLedgerEntry.usage_event`` for why there is no database constraint.
    last_event = models.ForeignKey(
        UsageEvent, on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    event_count = models.PositiveIntegerField()
    quantity = models.DecimalField(**QUANTITY, help_text="Overage units, in the meter's unit.")
    amount = models.DecimalField(**RATE, help_text="Overage as the local engine rated it (unrounded).")
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=10, choices=OutboxStatus.choices, default=OutboxStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    meter_event_identifier = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "id"])]
        verbose_name_plural = "Stripe usage outbox"


class MigrationChoice(models.TextChoices):
    PENDING = "pending", "Not chosen yet"
    KEEP = "keep", "Keep the current plan (grandfathered)"
    ACCEPT = "accept", "Accept the new version"


class PlanMigrationNotice(models.Model):
    """One customer's part in a ``plans.PlanMigration``: what they were told, what they chose, when they were
    set to move and moved, and the first-invoice safety net.

    The choice is made once (a conditional UPDATE where it is still pending): the second click of a link
    changes nothing. The bill figures are the notice's own backtest, kept so that the email, the plan page
    and the admin show the same numbers.
    """

    migration = models.ForeignKey("plans.PlanMigration", on_delete=models.CASCADE, related_name="notices")
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="migration_notices")
    from_version = models.ForeignKey(
        "plans.PlanVersion", on_delete=models.PROTECT, related_name="+", help_text="The version they were on."
    )
    # The last closed periods (up to three) re-rated under both versions, base fees included.
    periods = models.PositiveSmallIntegerField(default=0)
    usage = models.JSONField(default=dict, blank=True, help_text="Units per meter key over those periods.")
    old_total = models.DecimalField(**RATE, null=True, blank=True)
    new_total = models.DecimalField(**RATE, null=True, blank=True)
    choice = models.CharField(max_length=8, choices=MigrationChoice.choices, default=MigrationChoice.PENDING)
    chosen_at = models.DateTimeField(null=True, blank=True)
    chosen_by = models.CharField(max_length=200, blank=True, help_text="Who chose, and where.")
    created_at = models.DateTimeField()
    # The links work, and the customer may choose, until this moment; they move at the first renewal from it.
    # The migration's date, or later for a customer told late: never less notice than PRICE_CHANGE_NOTICE_DAYS.
    choose_by = models.DateTimeField()
    notice_sent_at = models.DateTimeField(null=True, blank=True)
    reminder_sent_at = models.DateTimeField(null=True, blank=True)
    # Set to move: the subscription's pending_plan_version was set, to apply at the renewal at renews_at.
    scheduled_at = models.DateTimeField(null=True, blank=True)
    renews_at = models.DateTimeField(null=True, blank=True)
    migrated_at = models.DateTimeField(
        null=True, blank=True, help_text="The first period on the new version."
    )
    skipped_reason = models.CharField(max_length=200, blank=True)
    # The first period on the new version, rated under both versions once it closed.
    safety_net_checked_at = models.DateTimeField(null=True, blank=True)
    first_period_old_total = models.DecimalField(**RATE, null=True, blank=True)
    first_period_new_total = models.DecimalField(**RATE, null=True, blank=True)
    safety_net_grant = models.OneToOneField(
        CreditGrant, null=True, blank=True, on_delete=models.PROTECT, related_name="migration_notice"
    )

    class Meta:
        ordering = ["migration", "customer__name"]
        constraints = [
            models.UniqueConstraint(fields=["migration", "customer"], name="migration_notice_once"),
            models.CheckConstraint(
                condition=Q(choice="pending", chosen_at__isnull=True)
                | (~Q(choice="pending") & Q(chosen_at__isnull=False)),
                name="migration_notice_choice_has_date",
            ),
        ]
        indexes = [models.Index(fields=["migration", "choice", "scheduled_at"])]

    def __str__(self) -> str:
        return f"{self.customer} · {self.migration}"

    @property
    def difference(self) -> Decimal | None:
        if self.old_total is None or self.new_total is None:
            return None
        return self.new_total - self.old_total
