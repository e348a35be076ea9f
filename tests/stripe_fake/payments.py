"""Checkout Sessions (mode ``payment``), the PaymentMethods they save, and PaymentIntents charged off-session.

Cards are not typed into the fake: a session is paid through the test control (``FakeStripe.checkout_complete``,
or the Pay button of the page the session's ``url`` serves), which saves a card PaymentMethod to the session's
customer when the session asked for ``setup_future_usage``. A saved card succeeds off-session until a test
tells the fake to decline it (``FakeStripe.payment_method_decline``).
"""

from .call import Call
from .catalog import customer_get
from .errors import StripeError, parameter_invalid, parameter_missing
from .params import (
    array,
    boolean,
    check_params,
    integer,
    mapping,
    metadata_apply,
    string,
)
from .state import State

# Stripe's limits on ``expires_at``: from 30 minutes to 24 hours after the session is created (the default).
CHECKOUT_MIN_LIFETIME_SECONDS = 30 * 60
CHECKOUT_MAX_LIFETIME_SECONDS = 24 * 3600
# Stripe's smallest charge per currency, in minor units (others: one minor unit, as the fake does not know them).
MINIMUM_CHARGE = {"usd": 50, "eur": 50, "gbp": 30, "cad": 50, "aud": 50, "jpy": 50, "chf": 50}
SETUP_FUTURE_USAGE = ("off_session", "on_session")
DECLINE_MESSAGES = {
    "card_declined": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "authentication_required": "Your card was declined. This transaction requires authentication.",
}


# Checkout Sessions -------------------------------------------------------------------------------------------

SESSION_FIELDS = {
    "mode",
    "line_items",
    "customer",
    "payment_intent_data",
    "metadata",
    "success_url",
    "cancel_url",
    "expires_at",
    "client_reference_id",
    "payment_method_types",
}


def _line_item(call: Call, raw: object, prefix: str) -> dict:
    if not isinstance(raw, dict):
        raise parameter_invalid(prefix, f"Invalid object: {prefix} must be a hash")
    check_params(raw, {"price_data", "price", "quantity"}, prefix)
    quantity = integer(raw, "quantity", prefix, required=True, minimum=1) or 1
    price_id = string(raw, "price", prefix)
    data = mapping(raw, "price_data", prefix)
    if (price_id is None) == (data is None):
        raise parameter_invalid(
            prefix, f"You must specify exactly one of {prefix}[price] or {prefix}[price_data]."
        )
    if price_id is not None:
        price = call.state.get("price", price_id, param=f"{prefix}[price]")
        if price["recurring"] is not None:
            raise parameter_invalid(
                f"{prefix}[price]", "You specified `payment` mode but passed a recurring price."
            )
        unit_amount, currency, name = price["unit_amount"], price["currency"], price["product"]
    else:
        data = data or {}
        data_prefix = f"{prefix}[price_data]"
        check_params(data, {"currency", "unit_amount", "product_data", "product"}, data_prefix)
        currency = (string(data, "currency", data_prefix, required=True) or "").lower()
        unit_amount = integer(data, "unit_amount", data_prefix, required=True, minimum=0) or 0
        product = mapping(data, "product_data", data_prefix)
        if product is None:
            raise parameter_missing(f"{data_prefix}[product_data]")
        check_params(product, {"name", "description", "metadata"}, f"{data_prefix}[product_data]")
        name = string(product, "name", f"{data_prefix}[product_data]", required=True) or ""
    return {
        "id": call.state.new_id("li"),
        "object": "item",
        "amount_subtotal": unit_amount * quantity,
        "amount_total": unit_amount * quantity,
        "currency": currency,
        "description": name,
        "price": {"object": "price", "currency": currency, "unit_amount": unit_amount, "type": "one_time"},
        "quantity": quantity,
    }


def checkout_session_create(call: Call) -> dict:
    params, state = call.params, call.state
    check_params(params, SESSION_FIELDS)
    mode = string(params, "mode", required=True, choices=("payment", "setup", "subscription"))
    if mode != "payment":
        raise parameter_invalid("mode", f"mode={mode} is real Stripe but not modelled by tests/stripe_fake.")
    customer_id = string(params, "customer")
    if customer_id is not None:
        customer_get(call, customer_id, param="customer")
    success_url = string(params, "success_url", required=True)
    cancel_url = string(params, "cancel_url")
    raw_items = array(params, "line_items", required=True) or []
    if not raw_items:
        raise parameter_missing("line_items")
    items = [_line_item(call, raw, f"line_items[{i}]") for i, raw in enumerate(raw_items)]
    currencies = {item["currency"] for item in items}
    if len(currencies) > 1:
        raise parameter_invalid("line_items", "All line items must have the same currency.")
    currency = currencies.pop()
    total = sum(item["amount_total"] for item in items)
    minimum = MINIMUM_CHARGE.get(currency, 1)
    if total < minimum:
        raise StripeError(
            f"The Checkout Session's total amount due must add up to at least {minimum} {currency} minor units.",
            code="amount_too_small",
            param="line_items",
            stored=False,
        )
    intent_data = mapping(params, "payment_intent_data") or {}
    check_params(intent_data, {"setup_future_usage", "metadata", "description"}, "payment_intent_data")
    setup_future_usage = string(
        intent_data, "setup_future_usage", "payment_intent_data", choices=SETUP_FUTURE_USAGE
    )
    if setup_future_usage is not None and customer_id is None:
        raise parameter_invalid(
            "payment_intent_data[setup_future_usage]",
            "A saved payment method needs a customer: pass `customer` with `setup_future_usage`.",
        )
    now = state.now()
    expires_at = integer(params, "expires_at", minimum=0)
    if expires_at is None:
        expires_at = now + CHECKOUT_MAX_LIFETIME_SECONDS
    elif not now + CHECKOUT_MIN_LIFETIME_SECONDS <= expires_at <= now + CHECKOUT_MAX_LIFETIME_SECONDS:
        raise parameter_invalid(
            "expires_at", "The expires_at timestamp must be between 30 minutes and 24 hours from now."
        )
    session_id = state.new_id("cs_test")
    session = state.insert(
        {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": total,
            "amount_total": total,
            "cancel_url": cancel_url,
            "client_reference_id": string(params, "client_reference_id"),
            "created": now,
            "currency": currency,
            "customer": customer_id,
            "expires_at": expires_at,
            "livemode": False,
            "metadata": metadata_apply({}, params),
            "mode": "payment",
            "payment_intent": None,
            "payment_status": "unpaid",
            "status": "open",
            "success_url": success_url,
            "url": f"{state.base_url}/pay/{session_id}",
            # The fake's own bookkeeping (not Stripe fields; ``State.render`` leaves them out).
            "_line_items": items,
            "_payment_intent_data": {
                "setup_future_usage": setup_future_usage,
                "metadata": metadata_apply({}, intent_data),
                "description": string(intent_data, "description", "payment_intent_data"),
            },
        }
    )
    return call.render(session)


def session_expire_if_due(state: State, session: dict) -> None:
    """Stripe expires an open session at ``expires_at`` on its own; the fake does it when the session is next
    looked at, so a test that travels past the expiry sees it expired (and gets the webhook)."""
    if session["status"] == "open" and state.now() >= session["expires_at"]:
        session_expire(state, session)


def session_expire(state: State, session: dict) -> dict:
    if session["status"] != "open":
        raise StripeError(
            f'Only Checkout Sessions with a status in ["open"] can be expired; {session["id"]} is '
            f"{session['status']}."
        )
    session["status"] = "expired"
    session["url"] = None
    state.emit("checkout.session.expired", state.render(session))
    return session


def checkout_session_retrieve(call: Call) -> dict:
    session = call.state.get("checkout.session", call.args[0], label="checkout.session")
    session_expire_if_due(call.state, session)
    return call.render(session)


def checkout_session_expire(call: Call) -> dict:
    check_params(call.params, set())
    session = call.state.get("checkout.session", call.args[0], label="checkout.session")
    session_expire_if_due(call.state, session)
    return call.render(session_expire(call.state, session))


def checkout_sessions_list(call: Call) -> dict:
    check_params(
        call.params, {"customer", "payment_intent", "status", "limit", "starting_after", "ending_before"}
    )
    customer, intent = string(call.params, "customer"), string(call.params, "payment_intent")
    status = string(call.params, "status", choices=("open", "complete", "expired"))
    for session in call.state.all("checkout.session"):
        session_expire_if_due(call.state, session)

    def keep(session: dict) -> bool:
        return (
            customer in (None, session["customer"])
            and intent in (None, session["payment_intent"])
            and status in (None, session["status"])
        )

    return call.render_list(call.state.all("checkout.session", keep), "/v1/checkout/sessions")


def checkout_session_line_items(call: Call) -> dict:
    check_params(call.params, {"limit", "starting_after", "ending_before"})
    session = call.state.get("checkout.session", call.args[0], label="checkout.session")
    return call.state.list_page(
        list(session["_line_items"]), call.params, f"/v1/checkout/sessions/{session['id']}/line_items"
    )


def session_complete(state: State, session_id: str, *, card_last4: str = "4242") -> dict:
    """The customer paid: a succeeded PaymentIntent, its card saved to the customer when the session asked
    for ``setup_future_usage``, and ``checkout.session.completed``."""
    session = state.get("checkout.session", session_id, label="checkout.session")
    session_expire_if_due(state, session)
    if session["status"] != "open":
        raise StripeError(f"Checkout Session {session_id} is {session['status']}; it can no longer be paid.")
    intent_data = session["_payment_intent_data"]
    method = _payment_method_new(state, card_last4)
    if intent_data["setup_future_usage"] and session["customer"]:
        method["customer"] = session["customer"]
        state.emit("payment_method.attached", state.render(method))
    intent = _intent_new(
        state,
        amount=session["amount_total"],
        currency=session["currency"],
        customer=session["customer"],
        payment_method=method["id"],
        metadata=dict(intent_data["metadata"]),
        description=intent_data["description"],
        setup_future_usage=intent_data["setup_future_usage"],
    )
    _intent_succeed(state, intent)
    session.update(status="complete", payment_status="paid", payment_intent=intent["id"], url=None)
    state.emit("checkout.session.completed", state.render(session))
    return session


# Payment methods ---------------------------------------------------------------------------------------------


def _payment_method_new(state: State, last4: str) -> dict:
    if not (len(last4) == 4 and last4.isdigit()):
        raise ValueError("card_last4 must be four digits")
    return state.insert(
        {
            "id": state.new_id("pm"),
            "object": "payment_method",
            "billing_details": {"address": None, "email": None, "name": None, "phone": None},
            "card": {
                "brand": "visa",
                "country": "US",
                "exp_month": 12,
                "exp_year": 2034,
                "funding": "credit",
                "last4": last4,
            },
            "created": state.now(),
            "customer": None,
            "livemode": False,
            "metadata": {},
            "type": "card",
            # Set by ``FakeStripe.payment_method_decline``: the decline code every later charge gets.
            "_decline_code": None,
        }
    )


def payment_methods_list(call: Call) -> dict:
    check_params(call.params, {"customer", "type", "limit", "starting_after", "ending_before"})
    customer = string(call.params, "customer", required=True)
    kind = string(call.params, "type")
    methods = call.state.all(
        "payment_method", lambda method: method["customer"] == customer and kind in (None, method["type"])
    )
    return call.render_list(methods, "/v1/payment_methods")


def payment_method_detach(call: Call) -> dict:
    check_params(call.params, set())
    method = call.state.get("payment_method", call.args[0], label="payment method")
    if method["customer"] is None:
        raise StripeError(f"The payment method {method['id']} is not attached to a customer.")
    method["customer"] = None
    call.state.emit("payment_method.detached", call.state.render(method))
    return call.render(method)


# Payment intents ---------------------------------------------------------------------------------------------

INTENT_FIELDS = {
    "amount",
    "currency",
    "customer",
    "payment_method",
    "confirm",
    "off_session",
    "metadata",
    "description",
    "setup_future_usage",
    "payment_method_types",
}


def _intent_new(
    state: State,
    *,
    amount: int,
    currency: str,
    customer: str | None,
    payment_method: str | None,
    metadata: dict,
    description: str | None,
    setup_future_usage: str | None = None,
) -> dict:
    return state.insert(
        {
            "id": state.new_id("pi"),
            "object": "payment_intent",
            "amount": amount,
            "amount_received": 0,
            "canceled_at": None,
            "created": state.now(),
            "currency": currency,
            "customer": customer,
            "description": description,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": metadata,
            "payment_method": payment_method,
            "payment_method_types": ["card"],
            "setup_future_usage": setup_future_usage,
            "status": "requires_payment_method" if payment_method is None else "requires_confirmation",
        }
    )


def _intent_succeed(state: State, intent: dict) -> None:
    intent.update(status="succeeded", amount_received=intent["amount"], last_payment_error=None)
    intent["latest_charge"] = state.new_id("ch")
    state.emit("payment_intent.succeeded", state.render(intent))


def _intent_confirm(state: State, intent: dict, *, off_session: bool) -> dict:
    method = state.get(
        "payment_method", intent["payment_method"] or "", label="payment method", param="payment_method"
    )
    if off_session and method["customer"] != intent["customer"]:
        raise parameter_invalid(
            "payment_method",
            "The provided PaymentMethod was previously used without being attached to a Customer; attach it "
            "before charging it off-session.",
        )
    code = method["_decline_code"]
    if code is None:
        _intent_succeed(state, intent)
        return intent
    message = DECLINE_MESSAGES.get(code, DECLINE_MESSAGES["card_declined"])
    error = {
        "type": "card_error",
        "code": "authentication_required" if code == "authentication_required" else "card_declined",
        "decline_code": code,
        "message": message,
        "payment_method": state.render(method),
    }
    intent.update(status="requires_payment_method", last_payment_error=error)
    state.emit("payment_intent.payment_failed", state.render(intent))
    # Stripe answers a declined confirmation with 402 and the intent in the error; the answer is kept for the
    # request's Idempotency-Key like any other that ran.
    raise StripeError(
        message,
        status=402,
        type="card_error",
        code=error["code"],
        extra={"decline_code": code, "payment_intent": state.render(intent)},
    )


def payment_intent_create(call: Call) -> dict:
    params, state = call.params, call.state
    check_params(params, INTENT_FIELDS)
    amount = integer(params, "amount", required=True, minimum=1) or 0
    currency = (string(params, "currency", required=True) or "").lower()
    if amount < MINIMUM_CHARGE.get(currency, 1):
        raise StripeError(
            f"Amount must be at least {MINIMUM_CHARGE[currency]} {currency} minor units.",
            code="amount_too_small",
            param="amount",
            stored=False,
        )
    customer_id = string(params, "customer")
    if customer_id is not None:
        customer_get(call, customer_id, param="customer")
    method_id = string(params, "payment_method")
    if method_id is not None:
        state.get("payment_method", method_id, label="payment method", param="payment_method")
    off_session = boolean(params, "off_session") or False
    confirm = boolean(params, "confirm") or False
    if off_session and not confirm:
        raise parameter_invalid("off_session", "off_session can only be passed when confirm=true.")
    if confirm and method_id is None:
        raise parameter_missing("payment_method")
    intent = _intent_new(
        state,
        amount=amount,
        currency=currency,
        customer=customer_id,
        payment_method=method_id,
        metadata=metadata_apply({}, params),
        description=string(params, "description"),
        setup_future_usage=string(params, "setup_future_usage", choices=SETUP_FUTURE_USAGE),
    )
    if confirm:
        _intent_confirm(state, intent, off_session=off_session)
    return call.render(intent)


def payment_intent_confirm(call: Call) -> dict:
    check_params(call.params, {"payment_method", "off_session"})
    state = call.state
    intent = state.get("payment_intent", call.args[0], label="payment_intent")
    if intent["status"] not in ("requires_payment_method", "requires_confirmation"):
        raise StripeError(
            f"This PaymentIntent's status is {intent['status']}; it cannot be confirmed.",
            code="payment_intent_unexpected_state",
        )
    method_id = string(call.params, "payment_method")
    if method_id is not None:
        state.get("payment_method", method_id, label="payment method", param="payment_method")
        intent["payment_method"] = method_id
    if intent["payment_method"] is None:
        raise parameter_missing("payment_method")
    _intent_confirm(state, intent, off_session=boolean(call.params, "off_session") or False)
    return call.render(intent)


def payment_method_decline(state: State, payment_method_id: str, code: str | None) -> dict:
    """Every later charge of the card fails with ``code`` (``None``: succeeds again)."""
    if code is not None and code not in DECLINE_MESSAGES:
        raise ValueError(f"unknown decline code {code!r}; expected one of {sorted(DECLINE_MESSAGES)}")
    method = state.get("payment_method", payment_method_id, label="payment method")
    method["_decline_code"] = code
    return method
