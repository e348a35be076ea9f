"""Subscriptions, their items and the invoices they produce."""

import copy

from . import billing
from .call import Call
from .catalog import customer_get
from .errors import StripeError, parameter_invalid, resource_missing
from .params import (
    array,
    boolean,
    check_params,
    integer,
    mapping,
    metadata_apply,
    present,
    string,
    text_update,
)
from .pricing import anchor_next, period_end

SUBSCRIPTION_FIELDS = {
    "metadata",
    "collection_method",
    "days_until_due",
    "description",
    "cancel_at_period_end",
    "default_payment_method",
    "proration_behavior",
    "payment_behavior",
    "off_session",
}


# Subscriptions ----------------------------------------------------------------------------------------------


def _item_price(call: Call, raw: dict, prefix: str) -> dict:
    price = call.state.get(
        "price", string(raw, "price", prefix, required=True) or "", param=f"{prefix}[price]"
    )
    if not price["active"]:
        raise parameter_invalid(
            f"{prefix}[price]", "The price specified is inactive. This field only accepts active prices."
        )
    if price["recurring"] is None:
        raise parameter_invalid(
            f"{prefix}[price]",
            "The price specified is set to `type=one_time` but this field only accepts prices with `type=recurring`.",
        )
    return price


def _item_quantity(raw: dict, prefix: str, price: dict, current: int | None = None) -> int | None:
    quantity = integer(raw, "quantity", prefix, minimum=0)
    if price["recurring"]["usage_type"] == "metered":
        # A metered item's quantity comes from its meter; Stripe refuses one set by hand.
        if quantity is not None:
            raise parameter_invalid(
                f"{prefix}[quantity]", "Quantity should not be specified where usage_type is `metered`."
            )
        return None
    return quantity if quantity is not None else (current or 1)


def _item_new(
    call: Call, raw: dict, prefix: str, subscription: dict, start: int, *, usage_from: int | None = None
) -> dict:
    """A new subscription item. ``usage_from`` is when its meter starts counting for it: an item added to a
    running subscription bills only usage from then, even though its period is the subscription's (Stripe:
    "on future invoices, we reflect only usage that occurs after the update")."""
    if not isinstance(raw, dict):
        raise parameter_invalid(prefix, f"Invalid object: {prefix} must be a hash")
    check_params(raw, {"price", "quantity", "metadata"}, prefix)
    price = _item_price(call, raw, prefix)
    recurring = price["recurring"]
    return {
        "id": call.state.new_id("si"),
        "object": "subscription_item",
        "billing_thresholds": None,
        "created": call.state.now(),
        "current_period_end": billing.subscription_period_end(subscription, start=start, recurring=recurring),
        "current_period_start": start,
        "discounts": [],
        "metadata": metadata_apply({}, raw),
        "price": price["id"],
        "quantity": _item_quantity(raw, prefix, price),
        "subscription": subscription["id"],
        "tax_rates": [],
        "usage_from": start if usage_from is None else usage_from,
    }


def _items_check(call: Call, items: list[dict]) -> str:
    """Stripe's rules across a subscription's items; returns their common currency."""
    prices = [call.state.objects[item["price"]] for item in items]
    if not items:
        raise parameter_invalid("items", "A subscription must have at least one item.")
    if len({price["id"] for price in prices}) != len(prices):
        raise parameter_invalid("items", "Cannot add multiple subscription items with the same price.")
    currencies = {price["currency"] for price in prices}
    if len(currencies) > 1:
        raise parameter_invalid("items", "All prices on a subscription must have the same currency.")
    # One billing period serves the whole subscription, so its prices must recur alike.
    if len({(price["recurring"]["interval"], price["recurring"]["interval_count"]) for price in prices}) > 1:
        raise parameter_invalid(
            "items",
            "All prices on a subscription must have the same `recurring[interval]` and interval_count.",
        )
    return currencies.pop()


def _subscription_fields(params: dict, subscription: dict) -> dict:
    """Apply the plain fields of a create or update; returns the previous values of those that changed."""
    days_until_due = integer(params, "days_until_due", minimum=0)
    updated = {
        "metadata": metadata_apply(subscription["metadata"], params),
        "description": text_update(params, "description", subscription["description"]),
        "collection_method": string(
            params, "collection_method", choices=("charge_automatically", "send_invoice")
        )
        or subscription["collection_method"],
        "days_until_due": subscription["days_until_due"] if days_until_due is None else days_until_due,
        "default_payment_method": text_update(
            params, "default_payment_method", subscription["default_payment_method"]
        ),
    }
    cancel_at_period_end = boolean(params, "cancel_at_period_end")
    if cancel_at_period_end is not None:
        updated["cancel_at_period_end"] = cancel_at_period_end
    previous = {key: subscription[key] for key, value in updated.items() if subscription[key] != value}
    subscription.update(updated)
    return previous


def _cancel_at_sync(subscription: dict, items: list[dict]) -> None:
    """``cancel_at`` shows when a subscription set to cancel at period end will actually end."""
    ends = [item["current_period_end"] for item in items]
    subscription["cancel_at"] = min(ends) if subscription["cancel_at_period_end"] and ends else None


ANCHOR_CONFIG_FIELDS = {"day_of_month", "hour", "minute", "second", "month"}


def _start_and_anchor(call: Call, raw_items: list) -> tuple[int, int | None, dict | None]:
    """``backdate_start_date``, ``billing_cycle_anchor`` and ``billing_cycle_anchor_config`` as Stripe takes
    them on create: (start date, anchor or None for "the start", anchor config or None)."""
    params, now = call.params, call.state.now()
    start = integer(params, "backdate_start_date", minimum=0)
    if start is not None and start >= now:
        raise parameter_invalid("backdate_start_date", "backdate_start_date must be in the past.")
    start = now if start is None else start
    anchor = integer(params, "billing_cycle_anchor", minimum=0)
    config = mapping(params, "billing_cycle_anchor_config")
    if anchor is not None and config is not None:
        raise parameter_invalid(
            "billing_cycle_anchor_config",
            "You may only specify one of these parameters: billing_cycle_anchor, billing_cycle_anchor_config.",
        )
    if config is not None:
        check_params(config, ANCHOR_CONFIG_FIELDS, "billing_cycle_anchor_config")
        parsed = {
            key: value
            for key in ANCHOR_CONFIG_FIELDS
            if (value := integer(config, key, "billing_cycle_anchor_config", minimum=0)) is not None
        }
        if not 1 <= parsed.get("day_of_month", 0) <= 31:
            raise parameter_invalid(
                "billing_cycle_anchor_config[day_of_month]", "day_of_month must be between 1 and 31."
            )
        anchor, config = anchor_next(config=parsed, now=now), parsed
    if anchor is None:
        return start, None, None
    if anchor <= now:
        raise parameter_invalid("billing_cycle_anchor", "billing_cycle_anchor cannot be in the past.")
    # The anchor may shorten the first period, never lengthen it past the natural billing date.
    for position, raw in enumerate(raw_items):
        price = _item_price(call, raw, f"items[{position}]") if isinstance(raw, dict) else None
        if price is None:
            continue
        recurring = price["recurring"]
        natural = period_end(
            anchor=start,
            start=start,
            interval=recurring["interval"],
            interval_count=recurring["interval_count"],
        )
        if anchor > natural:
            raise parameter_invalid(
                "billing_cycle_anchor",
                f"billing_cycle_anchor cannot be later than next natural billing date ({natural}) for plan",
            )
    return start, anchor, config


def subscription_create(call: Call) -> dict:
    params, state = call.params, call.state
    check_params(
        params,
        SUBSCRIPTION_FIELDS
        | {"customer", "items", "currency", "backdate_start_date", "billing_cycle_anchor"}
        | {"billing_cycle_anchor_config"},
    )
    customer = customer_get(call, string(params, "customer", required=True) or "", param="customer")
    now = state.now()
    raw_items = array(params, "items", required=True) or []
    start, anchor, anchor_config = _start_and_anchor(call, raw_items)
    string(params, "proration_behavior", choices=("create_prorations", "none", "always_invoice"))
    subscription = {
        "id": state.new_id("sub"),
        "object": "subscription",
        "application": None,
        "automatic_tax": {"enabled": False, "liability": None},
        "billing_cycle_anchor": start if anchor is None else anchor,
        "billing_cycle_anchor_config": anchor_config,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically",
        "created": now,
        "currency": None,
        "customer": customer["id"],
        "days_until_due": None,
        "default_payment_method": None,
        "description": None,
        "discounts": [],
        "ended_at": None,
        "items": [],
        "latest_invoice": None,
        "livemode": False,
        "metadata": {},
        "start_date": start,
        "status": "active",
        "trial_end": None,
        "trial_start": None,
    }
    items = [_item_new(call, raw, f"items[{i}]", subscription, start) for i, raw in enumerate(raw_items)]
    subscription["currency"] = _items_check(call, items)
    _subscription_fields(params, subscription)
    _cancel_at_sync(subscription, items)
    for item in items:
        state.insert(item)
    subscription["items"] = [item["id"] for item in items]
    state.insert(subscription)
    state.emit("customer.subscription.created", state.render(subscription))
    return call.render(subscription)


def subscription_update(call: Call) -> dict:
    params, state = call.params, call.state
    check_params(params, SUBSCRIPTION_FIELDS | {"items"})
    subscription = state.get("subscription", call.args[0])
    if subscription["status"] == "canceled" and set(params) - {"metadata", "cancellation_details", "expand"}:
        raise StripeError("A canceled subscription can only update its cancellation_details and metadata.")
    before = state.render(subscription)
    # Items are changed on copies and committed only once every rule passed, so a rejected update changes nothing.
    working = {item_id: copy.deepcopy(state.objects[item_id]) for item_id in subscription["items"]}
    for position, raw in enumerate(array(params, "items") or []):
        prefix = f"items[{position}]"
        if not isinstance(raw, dict):
            raise parameter_invalid(prefix, f"Invalid object: {prefix} must be a hash")
        item_id = string(raw, "id", prefix)
        if item_id is None:
            start = min(item["current_period_start"] for item in working.values()) if working else state.now()
            item = _item_new(call, raw, prefix, subscription, start, usage_from=state.now())
            working[item["id"]] = item
            continue
        if item_id not in working:
            raise resource_missing("subscription item", item_id, param=f"{prefix}[id]")
        check_params(raw, {"id", "price", "quantity", "metadata", "deleted", "clear_usage"}, prefix)
        if boolean(raw, "deleted", prefix):
            # Its meter's usage of the period is no longer billed by this subscription (a deleted item's usage
            # never reaches an invoice).
            del working[item_id]
            continue
        item = working[item_id]
        price = _item_price(call, raw, prefix) if present(raw, "price") else state.objects[item["price"]]
        if price["id"] != item["price"] and price["recurring"]["usage_type"] == "metered":
            # A metered item moved to another price bills only the usage from the switch, at the new price.
            item["usage_from"] = state.now()
        item["price"] = price["id"]
        item["quantity"] = _item_quantity(raw, prefix, price, item["quantity"])
        item["metadata"] = metadata_apply(item["metadata"], raw)
    subscription["currency"] = _items_check(call, list(working.values()))
    previous = _subscription_fields(params, subscription)
    _cancel_at_sync(subscription, list(working.values()))
    for item_id in set(subscription["items"]) - set(working):
        del state.objects[item_id]
    for item in working.values():
        state.insert(item)
    subscription["items"] = list(working)
    after = state.render(subscription)
    if after["items"] != before["items"]:
        previous["items"] = before["items"]
    if previous:
        state.emit("customer.subscription.updated", after, previous)
    return call.render(subscription)


def subscription_cancel(call: Call) -> dict:
    params, state = call.params, call.state
    check_params(params, {"invoice_now", "prorate", "cancellation_details"})
    subscription = state.get("subscription", call.args[0])
    if subscription["status"] == "canceled":
        raise StripeError(f"Subscription {subscription['id']} has already been canceled.")
    if boolean(params, "invoice_now"):
        # Bill the usage so far now rather than at the period end that will never come.
        billing.invoice_create(state, subscription, billing_reason="subscription_update", until=state.now())
    details = mapping(params, "cancellation_details") or {}
    check_params(details, {"comment", "feedback"}, "cancellation_details")
    subscription["cancellation_details"] = {
        "comment": string(details, "comment", "cancellation_details"),
        "feedback": string(details, "feedback", "cancellation_details"),
        "reason": "cancellation_requested",
    }
    billing.subscription_end(state, subscription, at=state.now())
    return call.render(subscription)


def subscriptions_list(call: Call) -> dict:
    check_params(call.params, {"customer", "status", "price", "limit", "starting_after", "ending_before"})
    customer = string(call.params, "customer")
    status = string(call.params, "status")
    price = string(call.params, "price")

    def keep(subscription: dict) -> bool:
        # Without a status filter Stripe leaves canceled subscriptions out.
        status_matches = (
            subscription["status"] != "canceled"
            if status is None
            else status in ("all", subscription["status"])
        )
        has_price = price is None or any(
            call.state.objects[i]["price"] == price for i in subscription["items"]
        )
        return status_matches and has_price and customer in (None, subscription["customer"])

    return call.render_list(call.state.all("subscription", keep), "/v1/subscriptions")


def subscription_items_list(call: Call) -> dict:
    check_params(call.params, {"subscription", "limit", "starting_after", "ending_before"})
    subscription_id = string(call.params, "subscription", required=True) or ""
    subscription = call.state.get("subscription", subscription_id, param="subscription")
    items = [call.state.objects[item_id] for item_id in subscription["items"]]
    return call.render_list(items, "/v1/subscription_items")


# Invoice items ------------------------------------------------------------------------------------------------


def invoiceitem_create(call: Call) -> dict:
    """A one-off amount for the customer's next invoice (of ``subscription`` when given). Negative amounts
    are credits, as in Stripe."""
    params, state = call.params, call.state
    check_params(
        params, {"customer", "amount", "currency", "description", "subscription", "period", "metadata"}
    )
    customer = customer_get(call, string(params, "customer", required=True) or "", param="customer")
    amount = integer(params, "amount", required=True)
    currency = string(params, "currency", required=True)
    subscription_id = string(params, "subscription")
    if subscription_id is not None:
        subscription = state.get("subscription", subscription_id, param="subscription")
        if subscription["customer"] != customer["id"]:
            raise parameter_invalid("subscription", "The subscription does not belong to this customer.")
        if subscription["currency"] != currency:
            raise parameter_invalid("currency", "The currency must match the subscription's currency.")
    period = mapping(params, "period") or {}
    check_params(period, {"start", "end"}, "period")
    now = state.now()
    item = state.insert(
        {
            "id": state.new_id("ii"),
            "object": "invoiceitem",
            "amount": amount,
            "currency": currency,
            "customer": customer["id"],
            "date": now,
            "description": string(params, "description"),
            "invoice": None,
            "livemode": False,
            "metadata": metadata_apply({}, params),
            "period": {
                "start": integer(period, "start", "period") or now,
                "end": integer(period, "end", "period") or now,
            },
            "proration": False,
            "quantity": 1,
            "subscription": subscription_id,
        }
    )
    return call.render(item)


def invoiceitems_list(call: Call) -> dict:
    check_params(call.params, {"customer", "pending", "invoice", "limit", "starting_after", "ending_before"})
    customer, invoice = string(call.params, "customer"), string(call.params, "invoice")
    pending = boolean(call.params, "pending")

    def keep(item: dict) -> bool:
        return (
            customer in (None, item["customer"])
            and invoice in (None, item["invoice"])
            and (pending is None or pending == (item["invoice"] is None))
        )

    return call.render_list(call.state.all("invoiceitem", keep), "/v1/invoiceitems")


# Invoices -----------------------------------------------------------------------------------------------------


def invoice_lines_list(call: Call) -> dict:
    check_params(call.params, {"limit", "starting_after", "ending_before"})
    invoice = call.state.get("invoice", call.args[0])
    return call.render_list(invoice["lines"]["data"], invoice["lines"]["url"])


def invoices_list(call: Call) -> dict:
    check_params(
        call.params, {"customer", "subscription", "status", "limit", "starting_after", "ending_before"}
    )
    customer, status, subscription = (
        string(call.params, key) for key in ("customer", "status", "subscription")
    )

    def keep(invoice: dict) -> bool:
        return (
            customer in (None, invoice["customer"])
            and status in (None, invoice["status"])
            and subscription in (None, invoice["parent"]["subscription_details"]["subscription"])
        )

    return call.render_list(call.state.all("invoice", keep), "/v1/invoices")
