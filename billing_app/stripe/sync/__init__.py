"""Mirror the catalog, the customers and their subscriptions into Stripe, and keep the Stripe ids.

``catalog`` syncs meters, products and prices; ``subscriptions`` customers and their subscriptions;
``pending`` is the periodic pass that syncs whatever is not in Stripe yet. This package holds what they
share: the idempotency key of every create, and the error for what Stripe cannot express.

Mapping (decided with the team):
- a local meter is a Stripe billing meter with ``event_name`` = the meter key, customers mapped by
  ``stripe_customer_id``, the value under ``value``, aggregated by sum. Its values are the post-paid
  overage *money* the local engine rated, in minor units (see docs/stripe.md), whatever the meter's
  own aggregation and price model;
- a dimension value with its own rate gets its own Stripe meter (``llm_tokens.gpt-4o``,
  ``StripeDimensionMeter``) and price, so Stripe totals and bills each value apart; values priced at the
  default rate feed the meter's own Stripe meter and the dimensional price's ``stripe_price_id``;
- a plan is a product; a plan version's base fee is a licensed monthly/yearly price and each of its usage
  prices a metered price on the meter at one minor unit per unit (``AMOUNT_PRICE``). Tiers, packages,
  dimension rates and credit conversion are applied once, locally: Stripe re-rating quantities we
  already drew from allowance, credits and the wallet is what billed tiered prices twice. Credit prices
  without a credit pack never produce overage and get no Stripe price.

Every create passes an idempotency key made from the local row's id and creation time, so a retry after a
timeout, or after a crash between the call and saving the id, gets Stripe's saved answer instead of a
second object. Ids are saved one by one right after each call: there is no transaction around network
calls, and a sync that stops half-way resumes where it stopped.
"""

from datetime import datetime
from typing import Any


class StripeSyncError(Exception):
    """A local object cannot be expressed in Stripe (a base fee finer than the currency's minor unit)."""

    code = "stripe_sync_error"


def idempotency_key(kind: str, pk: int, created: datetime, *extra: object) -> str:
    # The creation time keeps keys unique across databases that reuse ids (a reset development database
    # talking to the same Stripe test account would otherwise replay another object's answer).
    return "-".join(["billing", kind, str(pk), str(int(created.timestamp())), *map(str, extra)])


def request_options(key: str) -> Any:
    return {"idempotency_key": key}
