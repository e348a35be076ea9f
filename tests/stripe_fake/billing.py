"""What happens at the end of a billing period: metered usage is invoiced and the next period begins."""

from .errors import StripeError
from .pricing import period_end, price_amount
from .state import BILLING_STATUSES, State


def close_period(state: State, subscription_id: str | None = None) -> list[dict]:
    """End the current period of one subscription, or of every billing one: invoice its metered usage,
    then start the next period (or end the subscription if it was set to cancel at period end)."""
    if subscription_id is None:
        subscriptions = state.all("subscription", lambda sub: sub["status"] in BILLING_STATUSES)[::-1]
    else:
        subscriptions = [state.get("subscription", subscription_id)]
        if subscriptions[0]["status"] not in BILLING_STATUSES:
            raise StripeError(
                f"Subscription {subscription_id} is {subscriptions[0]['status']}; it has no period to close."
            )
    invoices = []
    for subscription in subscriptions:
        before = state.render(subscription)
        invoices.append(invoice_create(state, subscription, billing_reason="subscription_cycle"))
        if subscription["cancel_at_period_end"]:
            ended_at = min(state.objects[item_id]["current_period_end"] for item_id in subscription["items"])
            subscription_end(state, subscription, at=ended_at)
            continue
        for item_id in subscription["items"]:
            item = state.objects[item_id]
            recurring = state.objects[item["price"]]["recurring"]
            item["current_period_start"] = item["current_period_end"]
            item["current_period_end"] = subscription_period_end(
                subscription, start=item["current_period_start"], recurring=recurring
            )
        state.emit("customer.subscription.updated", state.render(subscription), {"items": before["items"]})
    return invoices


def subscription_period_end(subscription: dict, *, start: int, recurring: dict) -> int:
    """Where the period beginning at ``start`` ends: at the billing cycle anchor while before it (a first
    period that was backdated or runs short), then on the anchor's day (``billing_cycle_anchor_config``'s when
    set) every interval."""
    anchor = subscription["billing_cycle_anchor"]
    if start < anchor:
        return anchor
    config = subscription.get("billing_cycle_anchor_config") or {}
    return period_end(
        anchor=anchor,
        start=start,
        interval=recurring["interval"],
        interval_count=recurring["interval_count"],
        day_of_month=config.get("day_of_month"),
    )


def subscription_end(state: State, subscription: dict, *, at: int) -> None:
    subscription.update(status="canceled", canceled_at=state.now(), ended_at=at, cancel_at=None)
    state.emit("customer.subscription.deleted", state.render(subscription))


def invoice_create(
    state: State, subscription: dict, *, billing_reason: str, until: int | None = None
) -> dict:
    """Invoice the metered items of ``subscription`` for their current period (or up to ``until``), then
    finalize it, emitting ``invoice.created`` and ``invoice.finalized`` as Stripe does."""
    customer = state.objects[subscription["customer"]]
    invoice_id = state.new_id("in")
    now = state.now()
    lines = []
    items = [state.objects[item_id] for item_id in subscription["items"]]
    for item in items:
        price = state.objects[item["price"]]
        if price["recurring"]["usage_type"] != "metered":
            continue
        start = item["current_period_start"]
        end = item["current_period_end"] if until is None else until
        counted_from = max(start, item.get("usage_from", start))
        quantity = max(state.meter_total(price["recurring"]["meter"], customer["id"], counted_from, end), 0)
        amount = price_amount(price, quantity)
        product = state.objects[price["product"]]
        lines.append(
            {
                "id": state.new_id("il"),
                "object": "line_item",
                "amount": amount,
                "currency": price["currency"],
                "description": f"{quantity} × {product['name']}",
                "discount_amounts": [],
                "discountable": True,
                "discounts": [],
                "invoice": invoice_id,
                "livemode": False,
                "metadata": {},
                "parent": {
                    "type": "subscription_item_details",
                    "invoice_item_details": None,
                    "subscription_item_details": {
                        "invoice_item": None,
                        "proration": False,
                        "proration_details": {"credited_items": None},
                        "subscription": subscription["id"],
                        "subscription_item": item["id"],
                    },
                },
                "period": {"start": start, "end": end},
                "pretax_credit_amounts": [],
                "pricing": {
                    "type": "price_details",
                    "price_details": {"price": price["id"], "product": price["product"]},
                    "unit_amount_decimal": price["unit_amount_decimal"],
                },
                "quantity": quantity,
                "subtotal": amount,
                "taxes": [],
            }
        )
    lines += _pending_item_lines(state, subscription, invoice_id)
    total = sum(line["amount"] for line in lines)
    period_start = min((item["current_period_start"] for item in items), default=now)
    period_stop = (
        until if until is not None else max((item["current_period_end"] for item in items), default=now)
    )
    invoice = state.insert(
        {
            "id": invoice_id,
            "object": "invoice",
            "account_country": "US",
            "account_name": "Fake Stripe",
            "amount_due": total,
            "amount_overpaid": 0,
            "amount_paid": 0,
            "amount_remaining": total,
            "attempt_count": 0,
            "attempted": False,
            "auto_advance": True,
            "billing_reason": billing_reason,
            "collection_method": subscription["collection_method"],
            "created": now,
            "currency": subscription["currency"],
            "customer": customer["id"],
            "customer_email": customer.get("email"),
            "customer_name": customer.get("name"),
            "description": None,
            "discounts": [],
            "due_date": None,
            "effective_at": None,
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "lines": {
                "object": "list",
                "data": lines,
                "has_more": False,
                "total_count": len(lines),
                "url": f"/v1/invoices/{invoice_id}/lines",
            },
            "livemode": False,
            "metadata": {},
            "number": None,
            "parent": {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {
                    "metadata": dict(subscription["metadata"]),
                    "subscription": subscription["id"],
                },
            },
            "period_end": period_stop,
            "period_start": period_start,
            "status": "draft",
            "status_transitions": {
                "finalized_at": None,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "subtotal": total,
            "subtotal_excluding_tax": total,
            "total": total,
            "total_discount_amounts": [],
            "total_excluding_tax": total,
            "total_taxes": [],
        }
    )
    state.emit("invoice.created", state.render(invoice))
    state.invoice_sequence += 1
    invoice.update(
        status="open",
        number=f"FAKE-{state.invoice_sequence:04d}",
        effective_at=now,
        hosted_invoice_url=f"{state.base_url}/invoices/{invoice_id}",
    )
    invoice["status_transitions"]["finalized_at"] = now
    state.emit("invoice.finalized", state.render(invoice))
    subscription["latest_invoice"] = invoice_id
    return invoice


def _pending_item_lines(state: State, subscription: dict, invoice_id: str) -> list[dict]:
    """The customer's pending invoice items for this subscription (or for no subscription), now invoiced."""

    def pending(item: dict) -> bool:
        return (
            item["invoice"] is None
            and item["customer"] == subscription["customer"]
            and item["subscription"] in (None, subscription["id"])
        )

    lines = []
    for item in state.all("invoiceitem", pending)[::-1]:
        item["invoice"] = invoice_id
        lines.append(
            {
                "id": state.new_id("il"),
                "object": "line_item",
                "amount": item["amount"],
                "currency": item["currency"],
                "description": item["description"],
                "discount_amounts": [],
                "discountable": True,
                "discounts": [],
                "invoice": invoice_id,
                "livemode": False,
                "metadata": dict(item["metadata"]),
                "parent": {
                    "type": "invoice_item_details",
                    "invoice_item_details": {
                        "invoice_item": item["id"],
                        "proration": False,
                        "proration_details": {"credited_items": None},
                        "subscription": item["subscription"],
                    },
                    "subscription_item_details": None,
                },
                "period": dict(item["period"]),
                "pretax_credit_amounts": [],
                "pricing": {"type": "price_details", "price_details": None, "unit_amount_decimal": None},
                "quantity": 1,
                "subtotal": item["amount"],
                "taxes": [],
            }
        )
    return lines


def _open_invoice(state: State, invoice_id: str) -> dict:
    invoice = state.get("invoice", invoice_id)
    if invoice["status"] != "open":
        raise StripeError(f"Invoice {invoice_id} is {invoice['status']}; only an open invoice can be paid.")
    return invoice


def invoice_pay(state: State, invoice_id: str) -> dict:
    """Collect an open invoice in full: ``invoice.paid``."""
    invoice = _open_invoice(state, invoice_id)
    invoice["attempt_count"] += 1
    invoice.update(status="paid", attempted=True, amount_paid=invoice["amount_due"], amount_remaining=0)
    invoice["status_transitions"]["paid_at"] = state.now()
    state.emit("invoice.paid", state.render(invoice))
    return invoice


def invoice_payment_fail(state: State, invoice_id: str) -> dict:
    """A collection attempt fails; the invoice stays open: ``invoice.payment_failed``."""
    invoice = _open_invoice(state, invoice_id)
    invoice["attempt_count"] += 1
    invoice["attempted"] = True
    state.emit("invoice.payment_failed", state.render(invoice))
    return invoice
