"""The table routing (method, path) to every handler, and the event and webhook endpoint handlers.

A handler takes a ``Call``, validates params as Stripe does, changes state and returns the JSON answer; an
error is a raised ``StripeError``. The server runs each handler under the state lock.
"""

import re
import secrets

from . import catalog, metering, payments, subscriptions
from .call import Call, Handler, retriever
from .params import array, boolean, check_params, metadata_apply, string, text_update

# Events and webhook endpoints --------------------------------------------------------------------------------


def events_list(call: Call) -> dict:
    check_params(call.params, {"type", "types", "limit", "starting_after", "ending_before"})
    event_type = string(call.params, "type")
    types = array(call.params, "types")

    def keep(event: dict) -> bool:
        # "type" may end in a wildcard, as in Stripe: "invoice.*".
        if event_type is not None and not re.fullmatch(
            re.escape(event_type).replace(r"\*", ".*"), event["type"]
        ):
            return False
        return types is None or event["type"] in types

    return call.render_list(call.state.all("event", keep), "/v1/events")


ENDPOINT_FIELDS = {"url", "enabled_events", "description", "metadata"}


def webhook_endpoint_create(call: Call) -> dict:
    params, state = call.params, call.state
    check_params(params, ENDPOINT_FIELDS | {"api_version", "connect"})
    endpoint = state.insert(
        {
            "id": state.new_id("we"),
            "object": "webhook_endpoint",
            "api_version": string(params, "api_version"),
            "application": None,
            "created": state.now(),
            "description": string(params, "description"),
            "enabled_events": array(params, "enabled_events", required=True),
            "livemode": False,
            "metadata": metadata_apply({}, params),
            "status": "enabled",
            "url": string(params, "url", required=True),
        }
    )
    secret = "whsec_" + secrets.token_hex(16)
    state.endpoint_secrets[endpoint["id"]] = secret
    # Stripe shows the signing secret once, in the answer to the create call.
    return {**call.render(endpoint), "secret": secret}


def webhook_endpoint_update(call: Call) -> dict:
    params = call.params
    check_params(params, ENDPOINT_FIELDS | {"disabled"})
    endpoint = call.state.get("webhook_endpoint", call.args[0], label="webhook endpoint")
    endpoint["url"] = string(params, "url") or endpoint["url"]
    endpoint["enabled_events"] = array(params, "enabled_events") or endpoint["enabled_events"]
    endpoint["description"] = text_update(params, "description", endpoint["description"])
    endpoint["metadata"] = metadata_apply(endpoint["metadata"], params)
    disabled = boolean(params, "disabled")
    if disabled is not None:
        endpoint["status"] = "disabled" if disabled else "enabled"
    return call.render(endpoint)


def webhook_endpoint_delete(call: Call) -> dict:
    endpoint = call.state.get("webhook_endpoint", call.args[0], label="webhook endpoint")
    del call.state.objects[endpoint["id"]]
    del call.state.endpoint_secrets[endpoint["id"]]
    return {"id": endpoint["id"], "object": "webhook_endpoint", "deleted": True}


def webhook_endpoints_list(call: Call) -> dict:
    check_params(call.params, {"limit", "starting_after", "ending_before"})
    return call.render_list(call.state.all("webhook_endpoint"), "/v1/webhook_endpoints")


_ID = r"([^/]+)"
_ROUTE_SPECS: list[tuple[str, str, Handler]] = [
    ("POST", "/v1/customers", catalog.customer_create),
    ("GET", "/v1/customers", catalog.customers_list),
    # A deleted customer still answers, as the stub {"id", "object": "customer", "deleted": true}.
    ("GET", f"/v1/customers/{_ID}", retriever("customer")),
    ("POST", f"/v1/customers/{_ID}", catalog.customer_update),
    ("DELETE", f"/v1/customers/{_ID}", catalog.customer_delete),
    ("POST", "/v1/products", catalog.product_create),
    ("GET", "/v1/products", catalog.products_list),
    ("GET", f"/v1/products/{_ID}", retriever("product")),
    ("POST", f"/v1/products/{_ID}", catalog.product_update),
    ("POST", "/v1/prices", catalog.price_create),
    ("GET", "/v1/prices", catalog.prices_list),
    ("GET", f"/v1/prices/{_ID}", retriever("price")),
    ("POST", f"/v1/prices/{_ID}", catalog.price_update),
    ("POST", "/v1/subscriptions", subscriptions.subscription_create),
    ("GET", "/v1/subscriptions", subscriptions.subscriptions_list),
    ("GET", f"/v1/subscriptions/{_ID}", retriever("subscription")),
    ("POST", f"/v1/subscriptions/{_ID}", subscriptions.subscription_update),
    ("DELETE", f"/v1/subscriptions/{_ID}", subscriptions.subscription_cancel),
    ("GET", "/v1/subscription_items", subscriptions.subscription_items_list),
    ("GET", f"/v1/subscription_items/{_ID}", retriever("subscription_item", "subscription item")),
    ("POST", "/v1/invoiceitems", subscriptions.invoiceitem_create),
    ("GET", "/v1/invoiceitems", subscriptions.invoiceitems_list),
    ("GET", f"/v1/invoiceitems/{_ID}", retriever("invoiceitem")),
    ("GET", "/v1/invoices", subscriptions.invoices_list),
    ("GET", f"/v1/invoices/{_ID}", retriever("invoice")),
    ("GET", f"/v1/invoices/{_ID}/lines", subscriptions.invoice_lines_list),
    ("GET", "/v1/events", events_list),
    ("GET", f"/v1/events/{_ID}", retriever("event")),
    ("POST", "/v1/webhook_endpoints", webhook_endpoint_create),
    ("GET", "/v1/webhook_endpoints", webhook_endpoints_list),
    ("GET", f"/v1/webhook_endpoints/{_ID}", retriever("webhook_endpoint", "webhook endpoint")),
    ("POST", f"/v1/webhook_endpoints/{_ID}", webhook_endpoint_update),
    ("DELETE", f"/v1/webhook_endpoints/{_ID}", webhook_endpoint_delete),
    ("POST", "/v1/billing/meters", metering.meter_create),
    ("GET", "/v1/billing/meters", metering.meters_list),
    ("GET", f"/v1/billing/meters/{_ID}", retriever("billing.meter", "billing meter")),
    ("POST", f"/v1/billing/meters/{_ID}", metering.meter_update),
    ("POST", f"/v1/billing/meters/{_ID}/deactivate", metering.meter_deactivate),
    ("POST", f"/v1/billing/meters/{_ID}/reactivate", metering.meter_reactivate),
    ("GET", f"/v1/billing/meters/{_ID}/event_summaries", metering.event_summaries_list),
    ("POST", "/v1/billing/meter_events", metering.meter_event_create),
    ("GET", f"/v2/core/events/{_ID}", metering.v2_event_retrieve),
    ("POST", "/v1/checkout/sessions", payments.checkout_session_create),
    ("GET", "/v1/checkout/sessions", payments.checkout_sessions_list),
    ("GET", f"/v1/checkout/sessions/{_ID}", payments.checkout_session_retrieve),
    ("GET", f"/v1/checkout/sessions/{_ID}/line_items", payments.checkout_session_line_items),
    ("POST", f"/v1/checkout/sessions/{_ID}/expire", payments.checkout_session_expire),
    ("GET", "/v1/payment_methods", payments.payment_methods_list),
    ("GET", f"/v1/payment_methods/{_ID}", retriever("payment_method", "payment method")),
    ("POST", f"/v1/payment_methods/{_ID}/detach", payments.payment_method_detach),
    ("POST", "/v1/payment_intents", payments.payment_intent_create),
    ("GET", f"/v1/payment_intents/{_ID}", retriever("payment_intent")),
    ("POST", f"/v1/payment_intents/{_ID}/confirm", payments.payment_intent_confirm),
]
ROUTES = [(method, re.compile(pattern), handler) for method, pattern, handler in _ROUTE_SPECS]


def route(method: str, path: str) -> tuple[Handler, tuple[str, ...]] | None:
    for route_method, pattern, handler in ROUTES:
        match = pattern.fullmatch(path)
        if route_method == method and match:
            return handler, match.groups()
    return None
