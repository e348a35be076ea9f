"""The plan that would lift a refusal: named in the 402 answer, so a backend can show the prompt in its own UI."""

from decimal import Decimal

from plans.models import OveragePolicy, PlanVersion, VersionStatus
from usage.errors import UsageRefused


def upgrade_for_refusal(refusal: UsageRefused) -> PlanVersion | None:
    """The cheapest public plan (by base fee) in the customer's currency, other than theirs, that prices the
    meter and would allow it: one that bills overage (a prepaid plan would refuse it too), with a higher cap
    or none. None when no published plan would."""
    customer, meter = refusal.customer, refusal.meter
    if refusal.upgrade_for is None or customer is None or meter is None:
        return None
    candidates = (
        PlanVersion.objects.filter(
            status=VersionStatus.PUBLISHED,
            plan__is_public=True,
            currency__iexact=customer.currency,
            prices__meter=meter,
        )
        .exclude(plan__versions__subscriptions__customer=customer)
        .select_related("plan")
        .prefetch_related("entitlements")
        .order_by("plan_id", "-number")
    )
    latest: dict[int, PlanVersion] = {}
    for version in candidates:
        latest.setdefault(version.plan_id, version)
    limit = refusal.details.get("limit")
    current_cap = Decimal(limit) if limit is not None else None
    for version in sorted(latest.values(), key=lambda v: (v.base_fee, v.plan.code)):
        if version.overage_policy == OveragePolicy.BLOCKED:
            # A prepaid plan refuses usage past what was bought: it lifts nothing by itself.
            continue
        cap = next((e.limit for e in version.entitlements.all() if e.feature == meter.key), None)
        higher_cap_needed = refusal.upgrade_for == "cap" and current_cap is not None
        if higher_cap_needed and cap is not None and current_cap is not None and cap <= current_cap:
            continue
        return version
    return None
