"""What drives usage: the top actions and the per-member breakdown, per meter."""

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import Sum

from customers.models import Customer, Member
from customers.selectors import customer_plan_terms
from plans.display import DisplayUnit
from plans.models import Meter
from usage.models import DailyUsageRollup
from usage.selectors.formatting import format_amount, format_quantity_short, unit_label
from usage.selectors.periods import PeriodStart, usage_period_resolve
from usage.selectors.units import ZERO


class _ShareDisplay:
    """How a line of a breakdown table shows its quantity, cost and share of the meter."""

    quantity: Decimal
    unit: str
    cost: Decimal
    cost_unit: str
    share: Decimal
    display: DisplayUnit | None

    @property
    def quantity_display(self) -> str:
        """In the unit customers see the meter in (``plans.display``): a money meter's usage is its cost."""
        if self.display is None:
            return f"{format_quantity_short(self.quantity)} {unit_label(self.unit, self.quantity)}"
        if self.display.in_money:
            return self.cost_display
        shown = self.display.quantity(self.quantity)
        return f"{format_quantity_short(shown)} {self.display.label(shown)}"

    @property
    def cost_display(self) -> str:
        return format_amount(self.cost, self.cost_unit)

    @property
    def share_percent(self) -> int:
        return int((self.share * 100).to_integral_value())


@dataclass(frozen=True)
class ActionLine(_ShareDisplay):
    """What drove one meter's usage: an action (the event's ``action`` property)."""

    meter_key: str
    meter_name: str
    unit: str
    action: str  # "" when events carried none
    quantity: Decimal  # units recorded (cache hits included)
    cost: Decimal
    cost_unit: str
    share: Decimal  # of the meter's units recorded this period, 0..1
    display: DisplayUnit | None = None  # how customers see the meter

    @property
    def label(self) -> str:
        return self.action or "(no action given)"


def usage_top_actions(
    *, customer: Customer, period_start: PeriodStart = None, limit: int = 10
) -> tuple[ActionLine, ...]:
    """The actions that used the most, per meter, largest first; shares are of the meter's total."""
    period = usage_period_resolve(customer=customer, period_start=period_start)
    rows = list(
        DailyUsageRollup.objects.filter(customer=customer, period_start=period.start)
        .values("meter_id", "meter__key", "meter__name", "meter__unit", "action")
        .annotate(quantity=Sum("quantity"), cost=Sum("cost"))
    )
    return _shared_lines(customer=customer, rows=rows, limit=limit, make=_action_line)


def _action_line(row: dict[str, Any], unit: str, share: Decimal) -> ActionLine:
    return ActionLine(
        meter_key=row["meter__key"],
        meter_name=row["meter__name"],
        unit=row["meter__unit"],
        action=row["action"],
        quantity=row["quantity"] or ZERO,
        cost=row["cost"] or ZERO,
        cost_unit=unit,
        share=share,
        display=row["display"],
    )


@dataclass(frozen=True)
class MemberLine(_ShareDisplay):
    """One member's usage of one meter; member_id None is usage sent without a user."""

    member_id: int | None
    member_external_id: str | None
    member_name: str
    member_email: str
    meter_key: str
    meter_name: str
    unit: str
    quantity: Decimal
    cost: Decimal
    cost_unit: str
    money_cost: Decimal  # cost in currency (credits at the plan's credit-pack rate)
    currency: str  # the plan's
    share: Decimal  # of the meter's units recorded this period, 0..1
    display: DisplayUnit | None = None  # how customers see the meter

    @property
    def label(self) -> str:
        if self.member_id is None:
            return "Not attributed to a user"
        return self.member_name or self.member_email or f"Member {self.member_id}"


def usage_member_breakdown(
    *,
    customer: Customer,
    period_start: PeriodStart = None,
    only_member: Member | None = None,
) -> tuple[MemberLine, ...]:
    """Which members drive usage, per meter, largest first. ``only_member`` keeps that member's lines
    (shares stay shares of the whole customer's usage).
    """
    period = usage_period_resolve(customer=customer, period_start=period_start)
    rows = list(
        DailyUsageRollup.objects.filter(customer=customer, period_start=period.start)
        .values(
            "meter_id",
            "meter__key",
            "meter__name",
            "meter__unit",
            "member_id",
            "member__external_id",
            "member__name",
            "member__email",
        )
        .annotate(quantity=Sum("quantity"), cost=Sum("cost"))
    )
    lines = _shared_lines(customer=customer, rows=rows, limit=None, make=_member_line)
    if only_member is not None:
        lines = tuple(line for line in lines if line.member_id == only_member.pk)
    return lines


def _member_line(row: dict[str, Any], unit: str, share: Decimal) -> MemberLine:
    return MemberLine(
        member_id=row["member_id"],
        member_external_id=row["member__external_id"],
        member_name=row["member__name"] or "",
        member_email=row["member__email"] or "",
        meter_key=row["meter__key"],
        meter_name=row["meter__name"],
        unit=row["meter__unit"],
        quantity=row["quantity"] or ZERO,
        cost=row["cost"] or ZERO,
        cost_unit=unit,
        money_cost=row["money_cost"],
        currency=row["currency"],
        share=share,
        display=row["display"],
    )


@dataclass(frozen=True)
class MemberTotal:
    """One member's usage of every meter this period: the member breakdown's lines added up."""

    user: str | None  # the member's external id; None: usage sent without a user
    name: str
    meters: dict[str, Decimal]  # meter key -> units recorded (cache hits included)
    amount: Decimal  # what they cost, in currency
    currency: str


def usage_member_totals(*, customer: Customer, period_start: PeriodStart = None) -> tuple[MemberTotal, ...]:
    """Per member, the lines of ``usage_member_breakdown`` (the page's "who drives usage") added up: units
    per meter and their cost in money. Largest cost first."""
    lines_by_member: dict[int | None, list[MemberLine]] = defaultdict(list)
    for line in usage_member_breakdown(customer=customer, period_start=period_start):
        lines_by_member[line.member_id].append(line)
    totals = []
    for lines in lines_by_member.values():
        meters: dict[str, Decimal] = defaultdict(Decimal)
        for line in lines:
            meters[line.meter_key] += line.quantity
        totals.append(
            MemberTotal(
                user=lines[0].member_external_id,
                name=lines[0].member_name,
                meters=dict(meters),
                amount=sum((line.money_cost for line in lines), ZERO),
                currency=lines[0].currency,
            )
        )
    return tuple(sorted(totals, key=lambda total: -total.amount))


def _shared_lines(*, customer: Customer, rows: list[dict[str, Any]], limit: int | None, make: Any) -> Any:
    """Rows grouped by meter with their share of the meter's total, ranked by cost then quantity."""
    terms = customer_plan_terms(customer)
    totals: dict[int, Decimal] = defaultdict(Decimal)
    for row in rows:
        totals[row["meter_id"]] += row["quantity"] or ZERO
    rows = [row for row in rows if (row["quantity"] or ZERO) != 0 or (row["cost"] or ZERO) != 0]
    meters = Meter.objects.in_bulk({row["meter_id"] for row in rows})
    for row in rows:
        row["money_cost"] = terms.to_money(row["cost"] or ZERO, terms.cost_unit(row["meter_id"]))
        row["currency"] = terms.currency
        row["display"] = DisplayUnit.of(meters[row["meter_id"]])
    rows.sort(
        key=lambda row: (
            -row["money_cost"],
            -(row["quantity"] or ZERO),
            row["meter__key"],
        )
    )
    if limit is not None:
        rows = rows[:limit]
    lines = []
    for row in rows:
        total = totals[row["meter_id"]]
        share = (row["quantity"] or ZERO) / total if total > 0 else ZERO
        lines.append(make(row, terms.cost_unit(row["meter_id"]), share))
    return tuple(lines)
