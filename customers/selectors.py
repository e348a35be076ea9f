"""Reads for customers."""

from core.errors import NotFound
from core.pagination import CursorPage, cursor_page
from customers.models import Customer, Member, SpendControls, Subscription
from plans.terms import PlanTerms


def customer_by_external_id(external_id: str) -> Customer:
    customer = Customer.objects.filter(external_id=external_id).first()
    if customer is None:
        raise NotFound(f"No customer with external id {external_id!r}.", param="customer")
    return customer


def member_for_user(user) -> Member | None:
    """The dashboard user's membership (and so their customer), or None for staff and strangers."""
    if not getattr(user, "is_authenticated", False):
        return None
    return Member.objects.select_related("customer").filter(user=user).first()


def customer_subscription_terms(customer: Customer) -> tuple[Subscription | None, PlanTerms]:
    """The customer's subscription and its plan version's terms as stored now, in one read of the
    subscription; nothing is priced without a subscription."""
    subscription = Subscription.objects.filter(customer=customer).select_related("plan_version__plan").first()
    if subscription is None:
        return None, PlanTerms.without_plan(customer.currency)
    return subscription, PlanTerms.of_version(subscription.plan_version)


def customer_plan_terms(customer: Customer) -> PlanTerms:
    """The terms of the customer's plan version as stored now; nothing is priced without a subscription."""
    return customer_subscription_terms(customer)[1]


def customer_list(*, limit: int, starting_after: str | None = None) -> CursorPage[Customer]:
    """The customers, newest first; ``starting_after`` is the external id of the last one seen."""
    customers = Customer.objects.all()
    return cursor_page(
        rows=customers,
        scope=customers,
        limit=limit,
        starting_after=starting_after,
        cursor_field="external_id",
    )


def spend_controls_of(customer: Customer) -> SpendControls:
    """The customer's limits; none set (an unsaved row) when it has no row yet."""
    return SpendControls.objects.filter(customer=customer).first() or SpendControls(customer=customer)
