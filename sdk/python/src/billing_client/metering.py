"""What ``@client.metered(...)`` records for one call of the function it decorates.

The event is made only after the function returned: an attempt that raised records nothing, so a caller
that retries a failing call is billed for the one that succeeded. The event's idempotency key is fixed
when the call starts; pass ``idempotency_key=`` a function of the call's arguments (a request or job id)
to make it the same across runs of the same work, so that work run again as a whole (a task redelivered
after a worker died) is recorded once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from billing_client._requests import event_body, new_idempotency_key

CacheHits = Literal["record", "skip"]
ArgsValue = Callable[..., Any]


def _from_args(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return value(*args, **kwargs) if callable(value) else value


@dataclass(frozen=True)
class Metering:
    customer: str | ArgsValue
    meter: str
    quantity: Any = 1
    cached: Callable[[Any], bool] | None = None
    cache_hits: CacheHits = "record"
    user: str | ArgsValue | None = None
    properties: Mapping[str, Any] | ArgsValue | None = None
    idempotency_key: ArgsValue | None = None

    def __post_init__(self) -> None:
        if self.cache_hits not in ("record", "skip"):
            raise ValueError(f"cache_hits must be 'record' or 'skip', not {self.cache_hits!r}.")

    def start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> MeteredCall:
        """Read what the call's arguments decide before the work runs, so a mistake costs no work."""
        key = self.idempotency_key(*args, **kwargs) if self.idempotency_key else new_idempotency_key()
        if not isinstance(key, str) or not key:
            raise ValueError("idempotency_key= must return a non-empty string.")
        customer = _from_args(self.customer, args, kwargs)
        if not isinstance(customer, str) or not customer:
            raise ValueError("customer= must be, or return, a customer's external id.")
        properties = _from_args(self.properties, args, kwargs)
        return MeteredCall(
            metering=self,
            idempotency_key=key,
            customer=customer,
            user=_from_args(self.user, args, kwargs),
            properties=dict(properties) if properties else {},
        )


@dataclass(frozen=True)
class MeteredCall:
    metering: Metering
    idempotency_key: str
    customer: str
    user: str | None
    properties: dict[str, Any]

    def event_for(self, result: Any) -> dict[str, Any] | None:
        """The event for the call's result; None for a cache hit that is not recorded."""
        metering = self.metering
        properties = dict(self.properties)
        if metering.cached is not None and metering.cached(result):
            if metering.cache_hits == "skip":
                return None
            # The API records a cached event and never bills it.
            properties["cached"] = True
        quantity = metering.quantity(result) if callable(metering.quantity) else metering.quantity
        return event_body(
            customer=self.customer,
            meter=metering.meter,
            quantity=quantity,
            idempotency_key=self.idempotency_key,
            user=self.user,
            properties=properties or None,
        )
