"""What every page may show about the signed-in user's account."""

from typing import Any

from django.http import HttpRequest

from customers.models import Subscription


def current_plan(request: HttpRequest) -> dict[str, Any]:
    """``current_plan_code``: the plan the signed-in user's account is on, looked up only if a page asks
    (the pricing page marks it)."""

    def code() -> str:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return ""
        found = (
            Subscription.objects.filter(customer__members__user=user)
            .values_list("plan_version__plan__code", flat=True)
            .first()
        )
        return found or ""

    return {"current_plan_code": code}
