"""Django helpers: meter a view, and let a view run only when the customer's plan allows it.

Needs Django (and, for the permission, Django REST framework's view machinery); the rest of the client
does not::

    billing = Client(base_url=settings.BILLING_API_BASE, buffer_path="/var/lib/app/billing.sqlite3")

    @metered_view(billing, meter="export", customer=lambda request: request.user.account.billing_id)
    def export(request): ...

    class ReportView(APIView):
        permission_classes = [
            IsAuthenticated,
            entitlement_required(billing, meter="ai_action", customer=lambda request: request.user.account.billing_id,
                                 properties={"feature": "premium_models"}),
        ]
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, TypeVar, cast

from django.http import HttpRequest, HttpResponseBase

from billing_client.client import Client
from billing_client.errors import BillingError
from billing_client.metering import Metering

View = TypeVar("View", bound=Callable[..., Any])
RequestValue = Callable[[Any], Any]


def _request_key(*, view: Callable[..., Any], meter: str, request: Any) -> str:
    """The event key for a request: derived from its ``Idempotency-Key`` header when it has one, so a
    client retrying its request to this view is metered once; a fresh key otherwise."""
    header = request.headers.get("Idempotency-Key")
    if not header:
        return ""
    digest = hashlib.sha256(f"{view.__module__}.{view.__qualname__}\n{meter}\n{header}".encode())
    return f"view-{digest.hexdigest()}"


def metered_view(
    client: Client,
    *,
    meter: str,
    customer: RequestValue,
    quantity: Any = 1,
    user: RequestValue | None = None,
    properties: Mapping[str, Any] | RequestValue | None = None,
    idempotency_key: RequestValue | None = None,
) -> Callable[[View], View]:
    """Record one event for each request the view answers without an error (a status below 400).

    ``customer``, ``user``, ``properties`` and ``idempotency_key`` are values or functions of the request;
    ``quantity`` a number or a function of ``(request, response)``. An error answer records nothing. For a
    class-based view, decorate ``dispatch`` with Django's ``method_decorator``.
    """

    def metering_for(view: Callable[..., Any], request: HttpRequest) -> Metering:
        key = (
            idempotency_key(request)
            if idempotency_key
            else _request_key(view=view, meter=meter, request=request)
        )
        customer_id = customer(request)
        return Metering(
            customer=customer_id,
            meter=meter,
            quantity=(lambda response: quantity(request, response)) if callable(quantity) else quantity,
            user=user(request) if user else None,
            properties=properties(request) if callable(properties) else properties,
            idempotency_key=(lambda: key) if key else None,
        )

    def decorate(view: View) -> View:
        if inspect.iscoroutinefunction(view):
            awaited_view = cast(Callable[..., Awaitable[HttpResponseBase]], view)

            @functools.wraps(view)
            async def run_awaited(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
                call = metering_for(view, request).start((), {})
                response = await awaited_view(request, *args, **kwargs)
                if response.status_code < 400:
                    await asyncio.to_thread(client._record_metered, call, response)
                return response

            return cast(View, run_awaited)

        @functools.wraps(view)
        def run(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            call = metering_for(view, request).start((), {})
            response: HttpResponseBase = view(request, *args, **kwargs)
            if response.status_code < 400:
                client._record_metered(call, response)
            return response

        return cast(View, run)

    return decorate


class EntitlementPermission:
    """A DRF permission (``has_permission``) asking ``/check`` whether the customer may use ``meter``.

    Made by ``entitlement_required``. A refusal is answered by DRF with 403 and the API's code and message
    (``not_entitled``, ``entitlement_limit_reached``, ...). When the billing API cannot be asked, the
    view does not run: an unchecked request would be work that may never be paid for.
    """

    client: ClassVar[Client]
    meter: ClassVar[str]
    customer_of: ClassVar[RequestValue]
    quantity: ClassVar[Any] = 1
    properties: ClassVar[Mapping[str, Any] | RequestValue | None] = None

    message = "The customer's plan does not allow this."
    code = "not_entitled"

    def has_permission(self, request: Any, view: Any) -> bool:
        external_id = type(self).customer_of(request)
        if not external_id:
            self.message = "This request has no billing customer."
            self.code = "no_customer"
            return False
        properties = type(self).properties
        try:
            result = self.client.check(
                customer=external_id,
                meter=self.meter,
                quantity=self.quantity,
                properties=properties(request) if callable(properties) else properties,
            )
        except BillingError as failure:
            self.message = f"Could not check the customer's plan: {failure.message}"
            self.code = failure.code or "billing_unavailable"
            return False
        if result["allowed"]:
            return True
        self.message = result["message"] or self.message
        self.code = result["code"] or self.code
        return False

    def has_object_permission(self, request: Any, view: Any, obj: Any) -> bool:
        return True


def entitlement_required(
    client: Client,
    *,
    meter: str,
    customer: RequestValue,
    quantity: Any = 1,
    properties: Mapping[str, Any] | RequestValue | None = None,
) -> type[EntitlementPermission]:
    """A permission class for ``permission_classes``: the view runs only if ``/check`` allows it.

    ``customer`` is a function of the request giving the customer's external id; ``properties`` (e.g.
    ``{"feature": "premium_models"}``) a value or a function of the request.
    """
    return type(
        "EntitlementRequired",
        (EntitlementPermission,),
        {
            "client": client,
            "meter": meter,
            "customer_of": staticmethod(customer),
            "quantity": quantity,
            "properties": staticmethod(properties) if callable(properties) else properties,
        },
    )
