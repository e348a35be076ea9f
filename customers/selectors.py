"""Reads for customers."""

from core.errors import NotFound
from customers.models import Customer, Member, Subscription
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
