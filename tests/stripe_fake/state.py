"""Everything the fake remembers, behind one lock: objects, meter events, idempotent answers, faults, logs.

"Now" is ``time.time()``, read on every use, so a test that travels with time-machine moves the fake's
clock too (time-machine patches the clock process-wide, server threads included).
"""

import copy
import json
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from string import ascii_letters, digits
from typing import Any

from .errors import StripeError, resource_missing
from .params import integer, string
from .webhooks import WebhookSender

# The version the installed stripe SDK (16.x) pins; events echo the version of the latest API request instead
# when there is one, as Stripe stamps events with the account's version.
DEFAULT_API_VERSION = "2026-10-28.endive"

# Stripe prunes idempotency keys after 24 hours; a later reuse of the key runs as a new request.
IDEMPOTENCY_WINDOW_SECONDS = 24 * 3600

FAULT_MODES = ("error_500", "error_429", "hang")
# Subscriptions that still bill at period end.
BILLING_STATUSES = ("active", "trialing", "past_due")

_ID_ALPHABET = ascii_letters + digits


def iso_time(timestamp: int) -> str:
    """API v2 timestamps: ISO 8601 in UTC with milliseconds, ``2024-06-01T12:00:00.000Z``."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it. ``status`` is None when a fault closed the connection."""

    method: str
    path: str
    params: dict
    idempotency_key: str | None
    status: int | None
    replayed: bool
    headers: dict[str, str]
    time: int


@dataclass(frozen=True)
class MeterEventRecord:
    """A meter event the API accepted (HTTP 200).

    ``error_code`` is set for events Stripe would accept and later report through
    ``v1.billing.meter.error_report_triggered`` (unknown meter or customer, missing value); those never count.
    """

    event_name: str
    identifier: str
    timestamp: int
    payload: dict[str, str]
    meter_id: str | None
    customer_id: str | None
    value: int | None
    created: int
    error_code: str | None


@dataclass
class Fault:
    mode: str
    seconds: float
    remaining: int | None
    paths: tuple[str, ...]
    after: str

    def matches(self, path: str) -> bool:
        return not self.paths or any(path.startswith(prefix) for prefix in self.paths)


@dataclass(frozen=True)
class StoredResponse:
    method: str
    path: str
    params: dict
    status: int
    body: bytes
    headers: dict[str, str]
    request_id: str
    stored_at: int


@dataclass(frozen=True)
class WebhookTarget:
    url: str
    secret: str
    thin_url: str
    thin_secret: str


def below(expand: Sequence[str], head: str) -> list[str]:
    """The expand paths under ``head``: ``below(["items.data.price"], "items") == ["data.price"]``."""
    prefix = head + "."
    return [path[len(prefix) :] for path in expand if path.startswith(prefix)]


class State:
    """The fake's memory. Hold ``lock`` around any use: request threads, the test thread and the control API
    all reach in, and one lock keeps each request's read-decide-write whole."""

    def __init__(self, sender: WebhookSender, base_url: str = "") -> None:
        self.sender = sender
        # Where the fake serves pages a browser opens (a Checkout Session's ``url``, an invoice's hosted page).
        self.base_url = base_url
        self.lock = threading.RLock()
        self._faults_cleared = threading.Event()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.objects: dict[str, dict] = {}
            self.endpoint_secrets: dict[str, str] = {}
            self.v2_events: dict[str, dict] = {}
            self.meter_events: list[MeterEventRecord] = []
            # Meter event identifier → when it was accepted, for the rolling 24-hour uniqueness window.
            self.identifiers: dict[str, int] = {}
            self.idempotent: dict[str, StoredResponse] = {}
            self.requests: list[RecordedRequest] = []
            self.webhook_target: WebhookTarget | None = None
            self.api_version = DEFAULT_API_VERSION
            self.invoice_sequence = 0
            # The request being handled, stamped on the events it causes as ``request.id`` / ``idempotency_key``.
            self.request_context: dict[str, str | None] = {"id": None, "idempotency_key": None}
            self.faults_clear()
        self.sender.clear()

    @staticmethod
    def now() -> int:
        return int(time.time())

    @staticmethod
    def new_id(prefix: str) -> str:
        return prefix + "_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(14))

    # Objects ---------------------------------------------------------------------------------------------

    def insert(self, obj: dict) -> dict:
        self.objects[obj["id"]] = obj
        return obj

    def get(self, object_type: str, object_id: str, *, label: str | None = None, param: str = "id") -> dict:
        obj = self.objects.get(object_id)
        if obj is None or obj.get("object") != object_type:
            raise resource_missing(label or object_type, object_id, param=param)
        return obj

    def all(self, object_type: str, keep: Callable[[dict], bool] = lambda obj: True) -> list[dict]:
        """Objects of one type, newest first, as Stripe lists them."""
        found = [obj for obj in self.objects.values() if obj.get("object") == object_type and keep(obj)]
        return found[::-1]

    def render(self, obj: dict, expand: Sequence[str] = ()) -> dict:
        """The JSON answer for a stored object: references filled in, ``expand`` applied, a private copy."""
        out = copy.deepcopy(obj)
        kind = obj.get("object")
        if kind == "subscription":
            item_expand = below(below(expand, "items"), "data")
            items = [self.render(self.objects[item_id], item_expand) for item_id in obj["items"]]
            out["items"] = {
                "object": "list",
                "data": items,
                "has_more": False,
                "total_count": len(items),
                "url": f"/v1/subscription_items?subscription={obj['id']}",
            }
        elif kind == "subscription_item":
            out["price"] = self.render(self.objects[obj["price"]], below(expand, "price"))
            out.pop("usage_from", None)  # the fake's own bookkeeping, not a Stripe field
        elif kind == "price" and "tiers" not in expand:
            # Stripe includes a price's tiers only when asked with expand=["tiers"].
            out.pop("tiers", None)
        elif kind == "checkout.session" and "line_items" in expand:
            # Stripe includes a session's line items only when asked with expand=["line_items"].
            items = obj["_line_items"]
            out["line_items"] = {"object": "list", "data": copy.deepcopy(items), "has_more": False}
        # Keys starting with "_" are the fake's own bookkeeping, never Stripe fields.
        for key in [key for key in out if key.startswith("_")]:
            del out[key]
        for path in expand:
            head = path.split(".", 1)[0]
            value = out.get(head)
            if isinstance(value, str) and value in self.objects:
                out[head] = self.render(self.objects[value], below(expand, head))
        return out

    def list_page(self, data: list[dict], params: dict, url: str) -> dict:
        """One page of a list answer, with Stripe's ``limit`` / ``starting_after`` / ``ending_before``."""
        limit = integer(params, "limit", minimum=1) or 10
        if limit > 100:
            raise StripeError("Invalid limit: must be between 1 and 100", param="limit", stored=False)
        ids = [obj["id"] for obj in data]
        for cursor in ("starting_after", "ending_before"):
            cursor_id = string(params, cursor)
            if cursor_id is not None and cursor_id not in ids:
                raise resource_missing("object", cursor_id, param=cursor)
        after = string(params, "starting_after")
        before = string(params, "ending_before")
        if before is not None:
            data = data[: ids.index(before)]
            page, has_more = data[-limit:], len(data) > limit
        else:
            if after is not None:
                data = data[ids.index(after) + 1 :]
            page, has_more = data[:limit], len(data) > limit
        return {"object": "list", "data": page, "has_more": has_more, "url": url}

    # Events and webhooks -----------------------------------------------------------------------------------

    def emit(self, event_type: str, snapshot: dict, previous_attributes: dict | None = None) -> dict:
        """Record a v1 snapshot event and queue it to every webhook target that wants it."""
        targets = [
            (endpoint["url"], self.endpoint_secrets[endpoint["id"]])
            for endpoint in self.all("webhook_endpoint")
            if endpoint["status"] == "enabled"
            and ("*" in endpoint["enabled_events"] or event_type in endpoint["enabled_events"])
        ]
        if self.webhook_target is not None:
            targets.append((self.webhook_target.url, self.webhook_target.secret))
        data: dict[str, Any] = {"object": snapshot}
        if previous_attributes is not None:
            data["previous_attributes"] = previous_attributes
        event = self.insert(
            {
                "id": self.new_id("evt"),
                "object": "event",
                "api_version": self.api_version,
                "created": self.now(),
                "data": data,
                "livemode": False,
                "pending_webhooks": len(targets),
                "request": dict(self.request_context),
                "type": event_type,
            }
        )
        payload = json.dumps(event, indent=2)
        for url, secret in targets:
            self.sender.send(
                event_id=event["id"], event_type=event_type, url=url, secret=secret, payload=payload
            )
        return event

    def meter_error_emit(
        self,
        meter_id: str,
        *,
        code: str | None = None,
        message: str | None = None,
        identifier: str | None = None,
    ) -> dict:
        """Send a v2 thin ``v1.billing.meter.error_report_triggered`` event and keep the full event for
        ``GET /v2/core/events/{id}``.

        Without ``code`` the report summarises the meter's own rejected events, or, if it has none, one
        ``meter_event_customer_not_found`` sample.
        """
        self.get("billing.meter", meter_id, label="billing meter")
        now = self.now()
        if code is None:
            failed = [event for event in self.meter_events if event.meter_id == meter_id and event.error_code]
            samples = [(event.error_code or "", event.identifier) for event in failed] or [
                ("meter_event_customer_not_found", identifier or self.new_id("fake_identifier"))
            ]
        else:
            samples = [(code, identifier or self.new_id("fake_identifier"))]
        error_types = []
        for error_code in dict.fromkeys(sample_code for sample_code, _ in samples):
            sample_ids = [sample_id for sample_code, sample_id in samples if sample_code == error_code]
            error_types.append(
                {
                    "code": error_code,
                    "error_count": len(sample_ids),
                    "sample_errors": [
                        {
                            "error_message": message or f"Meter event rejected: {error_code}",
                            "request": {"identifier": i},
                        }
                        for i in sample_ids[:5]
                    ],
                }
            )
        notification = {
            "id": self.new_id("evt"),
            "object": "v2.core.event",
            "type": "v1.billing.meter.error_report_triggered",
            "livemode": False,
            "created": iso_time(now),
            "related_object": {
                "id": meter_id,
                "type": "billing.meter",
                "url": f"/v1/billing/meters/{meter_id}",
            },
        }
        self.v2_events[notification["id"]] = {
            **notification,
            "context": None,
            "reason": None,
            "data": {
                "developer_message_summary": f"{len(samples)} meter event(s) failed validation.",
                "reason": {"error_count": len(samples), "error_types": error_types},
                "validation_start": iso_time(now - 3600),
                "validation_end": iso_time(now),
            },
        }
        if self.webhook_target is not None:
            self.sender.send(
                event_id=notification["id"],
                event_type=notification["type"],
                url=self.webhook_target.thin_url,
                secret=self.webhook_target.thin_secret,
                payload=json.dumps(notification, indent=2),
            )
        return notification

    # Metering ---------------------------------------------------------------------------------------------

    def meter_total(self, meter_id: str, customer_id: str, start: int, end: int) -> int:
        """The meter's aggregate for one customer over ``start <= timestamp < end`` (Unix seconds)."""
        formula = self.get("billing.meter", meter_id, label="billing meter")["default_aggregation"]["formula"]
        counted = [
            (event.timestamp, position, event.value or 0)
            for position, event in enumerate(self.meter_events)
            if event.meter_id == meter_id
            and event.customer_id == customer_id
            and event.error_code is None
            and start <= event.timestamp < end
        ]
        if formula == "count":
            return len(counted)
        if formula == "last":
            return max(counted)[2] if counted else 0
        return sum(value for _, _, value in counted)

    # Faults -----------------------------------------------------------------------------------------------

    def fault_add(
        self,
        mode: str,
        *,
        seconds: float | None = None,
        count: int | None = None,
        paths: Sequence[str] | None = None,
        after: str = "close",
    ) -> None:
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; expected one of {FAULT_MODES}")
        if after not in ("close", "error_500"):
            raise ValueError(f"unknown hang ending {after!r}; expected 'close' or 'error_500'")
        with self.lock:
            self.faults.append(
                Fault(mode, 30.0 if seconds is None else seconds, count, tuple(paths or ()), after)
            )

    def fault_take(self, path: str) -> tuple[Fault, threading.Event] | None:
        """The fault that applies to this request, counting it down; with the event that ends a hang early."""
        with self.lock:
            for fault in self.faults:
                if fault.matches(path):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self.faults.remove(fault)
                    return fault, self._faults_cleared
        return None

    def faults_clear(self) -> None:
        with self.lock:
            self.faults: list[Fault] = []
            # Wake any request hanging on the old faults so it answers now instead of after its sleep.
            self._faults_cleared.set()
            self._faults_cleared = threading.Event()

    # Idempotency ------------------------------------------------------------------------------------------

    def idempotent_replay(self, key: str, method: str, path: str, params: dict) -> StoredResponse | None:
        """The saved answer for a retried key, or an ``idempotency_error`` if the key was used differently."""
        now = self.now()
        for stale in [
            k for k, saved in self.idempotent.items() if now - saved.stored_at > IDEMPOTENCY_WINDOW_SECONDS
        ]:
            del self.idempotent[stale]
        saved = self.idempotent.get(key)
        if saved is None:
            return None
        if (saved.method, saved.path) != (method, path):
            raise StripeError(
                "Keys for idempotent requests can only be used for the same endpoint they were first used for "
                f"('{saved.method} {saved.path}' vs '{method} {path}'). Try using a key other than '{key}' if "
                "you meant to execute a different request.",
                type="idempotency_error",
                stored=False,
            )
        if saved.params != params:
            raise StripeError(
                "Keys for idempotent requests can only be used with the same parameters they were first used "
                f"with. Try using a key other than '{key}' if you meant to execute a different request.",
                type="idempotency_error",
                stored=False,
            )
        return saved
