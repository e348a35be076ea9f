"""The default soft limit: what closed periods charged, and keeping the default on ``SpendControls`` current.

The rule (a share of the median of the latest closed periods) is ``customers.spend_limits.default_soft_limit_of``;
this module reads what it needs and stores the result once per billing period, with the period it is for, so
that ingest compares spend with a stored amount and never reads past periods per event. Whoever reads the
default (ingest when a crossing is possible, the limits and usage API, the page, the alerting job) calls
``default_soft_limits_refresh`` first: once the default is current it costs no query.
"""

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal

from django.db.models import F, Sum

from customers.models import Customer, SpendControls, Subscription
from customers.selectors import spend_controls_of
from customers.spend_limits import default_soft_limit_of
from plans.terms import PlanTerms, plan_terms_cached
from usage.models import PeriodUsage


def closed_period_charges(
    *, subscriptions: Sequence[Subscription], terms: Mapping[int, PlanTerms] | None = None
) -> dict[int, list[Decimal]]:
    """Each customer's usage charges per closed period, newest first, by customer id, in one query.

    A closed period is one before the subscription's current period with usage (as the usage page lists
    periods: ``usage.selectors.periods.usage_periods``). Its charges are what its usage was rated at in
    money, whatever paid for it (credit-priced usage at the plan's credit-pack rate): the measure of
    ``ConsumptionEngine.period_spend``, which the limits are compared with, at the terms of the plan in
    force. ``terms`` are the customers' plan terms by customer id, when the caller has them.
    """
    by_customer = {subscription.customer_id: subscription for subscription in subscriptions}
    if not by_customer:
        return {}
    rows = (
        PeriodUsage.objects.filter(
            customer_id__in=list(by_customer),
            period_start__lt=F("customer__subscription__current_period_start"),
        )
        .values("customer_id", "period_start", "unit")
        .annotate(cost=Sum("cost"))
        .order_by()
    )
    totals: dict[int, dict[datetime, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for row in rows:
        plan_terms = _terms_of(by_customer[row["customer_id"]], terms)
        totals[row["customer_id"]][row["period_start"]] += plan_terms.to_money(
            row["cost"], row["unit"] or plan_terms.currency
        )
    return {
        customer_id: [periods[start] for start in sorted(periods, reverse=True)]
        for customer_id, periods in totals.items()
    }


def _terms_of(subscription: Subscription, terms: Mapping[int, PlanTerms] | None) -> PlanTerms:
    known = (terms or {}).get(subscription.customer_id)
    return known if known is not None else plan_terms_cached(subscription.plan_version_id)


def default_soft_limits_refresh(
    *,
    controls_and_subscriptions: Sequence[tuple[SpendControls, Subscription | None]],
    terms: Mapping[int, PlanTerms] | None = None,
) -> None:
    """Bring each customer's stored default up to their current period; a no-op (no query) when it is.
    Without a subscription there is no period to warn in, so no default (set on the object, not stored).

    Stale ones are computed together in one read and saved in one statement; the ``SpendControls``
    objects given are updated in place; ``terms`` are the customers' plan terms by customer id, when the
    caller has them. Controls never saved (customers from before spend controls)
    are computed but not stored. Late usage dated in a closed period does not move a default already
    computed for the period: it is a warning level, fixed for the period it warns in.
    """
    stale = []
    for controls, subscription in controls_and_subscriptions:
        if subscription is None:
            controls.default_soft_limit = None
        elif controls.default_soft_limit_period_start != subscription.current_period_start:
            stale.append((controls, subscription))
    if not stale:
        return
    charges = closed_period_charges(subscriptions=[subscription for _, subscription in stale], terms=terms)
    to_save = []
    for controls, subscription in stale:
        controls.default_soft_limit = default_soft_limit_of(
            period_charges=charges.get(subscription.customer_id, []),
            currency=_terms_of(subscription, terms).currency,
        )
        controls.default_soft_limit_period_start = subscription.current_period_start
        if controls.pk is not None:
            to_save.append(controls)
    if to_save:
        # Only these two columns: the customer's own limits are theirs to change, under their own lock.
        SpendControls.objects.bulk_update(to_save, ["default_soft_limit", "default_soft_limit_period_start"])


def spend_controls_with_default(
    *, customer: Customer, controls: SpendControls | None = None
) -> SpendControls:
    """The customer's limits (``controls`` when the caller has them) with the default soft limit current."""
    controls = controls if controls is not None else spend_controls_of(customer)
    subscription = Subscription.objects.filter(customer=customer).first()
    default_soft_limits_refresh(controls_and_subscriptions=[(controls, subscription)])
    return controls
