"""Billing meters, meter events and meter event summaries (``/v1/billing/...``), and v2 event retrieval."""

import re
import uuid

from .call import Call
from .errors import StripeError, parameter_invalid, resource_missing
from .params import check_params, integer, mapping, string
from .state import MeterEventRecord

# Stripe accepts meter events up to 35 calendar days old and at most 5 minutes ahead (clock drift).
MAX_EVENT_AGE_SECONDS = 35 * 86_400
MAX_EVENT_LEAD_SECONDS = 5 * 60
# Meter event identifiers are unique within a rolling window of (at least) 24 hours.
IDENTIFIER_WINDOW_SECONDS = 24 * 3600
SUMMARY_WINDOWS = {"hour": 3600, "day": 86_400}

_WHOLE_NUMBER = re.compile(r"-?\d+")


def _meter(call: Call) -> dict:
    return call.state.get("billing.meter", call.args[0], label="billing meter")


def meter_create(call: Call) -> dict:
    params, state = call.params, call.state
    check_params(
        params,
        {
            "display_name",
            "event_name",
            "default_aggregation",
            "customer_mapping",
            "value_settings",
            "event_time_window",
        },
    )
    display_name = string(params, "display_name", required=True, max_length=250)
    event_name = string(params, "event_name", required=True, max_length=100)
    # An event name can feed only one meter, so events are never ambiguous about where they count.
    if state.all("billing.meter", lambda meter: meter["event_name"] == event_name):
        raise StripeError(f"A meter with event_name '{event_name}' already exists.", param="event_name")
    aggregation = mapping(params, "default_aggregation", required=True) or {}
    check_params(aggregation, {"formula"}, "default_aggregation")
    formula = string(
        aggregation, "formula", "default_aggregation", required=True, choices=("sum", "count", "last")
    )
    customer_mapping = {"event_payload_key": "stripe_customer_id", "type": "by_id"}
    given_mapping = mapping(params, "customer_mapping")
    if given_mapping is not None:
        check_params(given_mapping, {"event_payload_key", "type"}, "customer_mapping")
        customer_mapping = {
            "event_payload_key": string(
                given_mapping, "event_payload_key", "customer_mapping", required=True
            ),
            "type": string(given_mapping, "type", "customer_mapping", required=True, choices=("by_id",)),
        }
    value_settings = {"event_payload_key": "value"}
    given_settings = mapping(params, "value_settings")
    if given_settings is not None:
        check_params(given_settings, {"event_payload_key"}, "value_settings")
        value_settings = {
            "event_payload_key": string(given_settings, "event_payload_key", "value_settings", required=True)
        }
    now = state.now()
    meter = state.insert(
        {
            "id": state.new_id("mtr"),
            "object": "billing.meter",
            "created": now,
            "customer_mapping": customer_mapping,
            "default_aggregation": {"formula": formula},
            "display_name": display_name,
            "event_name": event_name,
            "event_time_window": string(params, "event_time_window", choices=("day", "hour")),
            "livemode": False,
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "updated": now,
            "value_settings": value_settings,
        }
    )
    return call.render(meter)


def meter_update(call: Call) -> dict:
    # Stripe lets only the display name change once a meter exists.
    check_params(call.params, {"display_name"})
    meter = _meter(call)
    display_name = string(call.params, "display_name", max_length=250)
    if display_name is not None:
        meter.update(display_name=display_name, updated=call.state.now())
    return call.render(meter)


def meter_deactivate(call: Call) -> dict:
    check_params(call.params, set())
    meter = _meter(call)
    now = call.state.now()
    meter.update(status="inactive", updated=now, status_transitions={"deactivated_at": now})
    return call.render(meter)


def meter_reactivate(call: Call) -> dict:
    check_params(call.params, set())
    meter = _meter(call)
    meter.update(status="active", updated=call.state.now(), status_transitions={"deactivated_at": None})
    return call.render(meter)


def meters_list(call: Call) -> dict:
    check_params(call.params, {"status", "limit", "starting_after", "ending_before"})
    status = string(call.params, "status", choices=("active", "inactive"))
    meters = call.state.all("billing.meter", lambda meter: status is None or meter["status"] == status)
    return call.render_list(meters, "/v1/billing/meters")


def meter_event_create(call: Call) -> dict:
    """Accept a usage event, or reject it synchronously where Stripe does: bad timestamp, a value that is not
    a whole number, or an identifier already seen in the last 24 hours (which must never count twice).

    Problems Stripe only finds later (no such meter or customer) are accepted here, recorded with an
    ``error_code`` and left out of every total, to be reported by ``send_meter_error``.
    """
    params, state = call.params, call.state
    check_params(params, {"event_name", "payload", "identifier", "timestamp"})
    event_name = string(params, "event_name", required=True, max_length=100) or ""
    payload = mapping(params, "payload", required=True) or {}
    now = state.now()
    timestamp = integer(params, "timestamp")
    timestamp = now if timestamp is None else timestamp
    if timestamp < now - MAX_EVENT_AGE_SECONDS:
        raise parameter_invalid(
            "timestamp",
            "The event timestamp cannot be more than 35 days in past. Expected a timestamp greater than or "
            f"equal to {now - MAX_EVENT_AGE_SECONDS}.",
        )
    if timestamp > now + MAX_EVENT_LEAD_SECONDS:
        raise parameter_invalid(
            "timestamp",
            "The event timestamp cannot be more than 5 minutes in the future. Expected a timestamp less than "
            f"or equal to {now + MAX_EVENT_LEAD_SECONDS}.",
        )
    meters = state.all("billing.meter", lambda meter: meter["event_name"] == event_name)
    meter = meters[0] if meters else None
    value_key = meter["value_settings"]["event_payload_key"] if meter else "value"
    raw_value = payload.get(value_key)
    if raw_value is not None and not (isinstance(raw_value, str) and _WHOLE_NUMBER.fullmatch(raw_value)):
        raise parameter_invalid(
            f"payload[{value_key}]",
            f"Invalid value for payload[{value_key}]: '{raw_value}'. Meter event values must be whole numbers.",
        )
    identifier = string(params, "identifier", max_length=100) or str(uuid.uuid4())
    for seen in [key for key, at in state.identifiers.items() if now - at >= IDENTIFIER_WINDOW_SECONDS]:
        del state.identifiers[seen]
    if identifier in state.identifiers:
        # What Stripe answers for a repeated identifier: a 400 that it marks as not worth retrying.
        raise StripeError(
            f"An event already exists with identifier {identifier}.",
            param="identifier",
            headers={"Stripe-Should-Retry": "false"},
        )
    state.identifiers[identifier] = now

    customer_key = meter["customer_mapping"]["event_payload_key"] if meter else "stripe_customer_id"
    customer_id = payload.get(customer_key)
    customer = state.objects.get(customer_id) if isinstance(customer_id, str) else None
    if meter is None:
        error_code: str | None = "no_meter"
    elif meter["status"] != "active":
        error_code = "archived_meter"
    elif customer_id is None:
        error_code = "meter_event_no_customer_defined"
    elif customer is None or customer.get("object") != "customer" or customer.get("deleted"):
        error_code = "meter_event_customer_not_found"
    elif raw_value is None and meter["default_aggregation"]["formula"] != "count":
        error_code = "meter_event_invalid_value"
    else:
        error_code = None
    state.meter_events.append(
        MeterEventRecord(
            event_name=event_name,
            identifier=identifier,
            timestamp=timestamp,
            payload=dict(payload),
            meter_id=meter["id"] if meter else None,
            customer_id=customer_id if isinstance(customer_id, str) else None,
            value=int(raw_value) if raw_value is not None else None,
            created=now,
            error_code=error_code,
        )
    )
    return {
        "object": "billing.meter_event",
        "created": now,
        "event_name": event_name,
        "identifier": identifier,
        "livemode": False,
        "payload": dict(payload),
        "timestamp": timestamp,
    }


def event_summaries_list(call: Call) -> dict:
    """``billing.meter_event_summary`` objects for one customer: one for the whole range, or one per hour or
    day with ``value_grouping_window`` (every window, empty ones included, oldest first)."""
    params, state = call.params, call.state
    check_params(
        params,
        {
            "customer",
            "start_time",
            "end_time",
            "value_grouping_window",
            "limit",
            "starting_after",
            "ending_before",
        },
    )
    meter = _meter(call)
    customer_id = string(params, "customer", required=True) or ""
    start = integer(params, "start_time", required=True) or 0
    end = integer(params, "end_time", required=True) or 0
    window = string(params, "value_grouping_window", choices=tuple(SUMMARY_WINDOWS))
    step = SUMMARY_WINDOWS[window] if window else None
    for name, value in (("start_time", start), ("end_time", end)):
        # Stripe aggregates per minute, and per hour or UTC day when grouping by one.
        if value % (step or 60):
            unit = {None: "minute", 3600: "hour", 86_400: "day"}[step]
            raise parameter_invalid(name, f"{name} must be aligned with {unit} boundaries.")
    if end <= start:
        raise parameter_invalid("end_time", "end_time must be after start_time.")
    if customer_id not in state.objects:
        raise resource_missing("customer", customer_id, param="customer")
    bounds = [(at, min(at + step, end)) for at in range(start, end, step)] if step else [(start, end)]
    summaries = [
        {
            "id": f"mtrusg_{meter['id']}_{customer_id}_{window_start}",
            "object": "billing.meter_event_summary",
            "aggregated_value": state.meter_total(meter["id"], customer_id, window_start, window_end),
            "end_time": window_end,
            "livemode": False,
            "meter": meter["id"],
            "start_time": window_start,
        }
        for window_start, window_end in bounds
    ]
    return state.list_page(summaries, params, f"/v1/billing/meters/{meter['id']}/event_summaries")


def v2_event_retrieve(call: Call) -> dict:
    event = call.state.v2_events.get(call.args[0])
    if event is None:
        raise resource_missing("event", call.args[0])
    return dict(event)
