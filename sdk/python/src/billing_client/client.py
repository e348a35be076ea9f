"""``Client`` and ``AsyncClient``: the same methods, one blocking, one awaited.

::

    billing = Client(api_key="sk_live_...", base_url="https://billing.example.com")
    billing.customers.retrieve("acme")
    with billing.reserve(customer="acme", meter="llm_tokens", quantity=4000) as hold:
        hold.commit(800)

``api_key`` and ``base_url`` default to the ``BILLING_API_KEY`` and ``BILLING_API_BASE`` environment
variables. With ``buffer_path``, usage events that cannot be delivered are kept in that SQLite file and
delivered by a background thread (``billing_client.buffer``); reservations, checks and every other call
are never buffered: the caller must know now whether it may go ahead.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

import httpx

from billing_client import _requests as requests
from billing_client._async_resources import (
    AsyncCredits,
    AsyncCustomers,
    AsyncEvents,
    AsyncReservations,
    AsyncWallet,
)
from billing_client._http import ApiRequest, AsyncTransport, RetryPolicy, SyncTransport
from billing_client._resources import Credits, Customers, Events, Reservations, Wallet
from billing_client.buffer import TRANSIENT_FAILURES, BufferFlusher, EventBuffer, buffered_result
from billing_client.errors import BillingError
from billing_client.metering import ArgsValue, CacheHits, MeteredCall, Metering
from billing_client.reservations import AsyncHold, Hold, PendingHold
from billing_client.types import CheckResult, Estimate, EventResult, UsageSummary

logger = logging.getLogger("billing_client")

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_NETWORK_RETRIES = 2
DEFAULT_BUFFER_MAX_EVENTS = 100_000
DEFAULT_FLUSH_INTERVAL = 5.0
# The flusher backs off between its own passes; one attempt a pass keeps close() quick when the API is down.
_FLUSHER_RETRY = RetryPolicy(max_network_retries=0)


def _settings(api_key: str | None, base_url: str | None) -> tuple[str, str]:
    api_key = api_key or os.environ.get("BILLING_API_KEY")
    base_url = base_url or os.environ.get("BILLING_API_BASE")
    if not api_key:
        raise ValueError("An API key is needed: Client(api_key=...) or the BILLING_API_KEY variable.")
    if not base_url:
        raise ValueError(
            "The billing server's address is needed: Client(base_url='https://billing.example.com') "
            "or the BILLING_API_BASE variable."
        )
    return api_key, base_url


def _log_metered_failure(call: MeteredCall, failure: BillingError) -> None:
    # The work is done and its result goes back to the caller: raising here would make it look failed
    # and be run again. With buffer_path, a delivery failure never reaches this point.
    logger.error(
        "Usage of %s for %s (key %s) was not recorded: %s",
        call.metering.meter,
        call.customer,
        call.idempotency_key,
        failure,
    )


def _log_metered_result(call: MeteredCall, result: EventResult) -> None:
    if result["status"] == "refused":
        logger.warning(
            "Usage of %s for %s (key %s) was refused: %s %s",
            call.metering.meter,
            call.customer,
            call.idempotency_key,
            result.get("code"),
            result.get("message"),
        )


class Client:
    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        max_network_retries: int = DEFAULT_MAX_NETWORK_RETRIES,
        timeout: float = DEFAULT_TIMEOUT,
        buffer_path: str | os.PathLike[str] | None = None,
        buffer_max_events: int = DEFAULT_BUFFER_MAX_EVENTS,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        http_client: httpx.Client | None = None,
    ) -> None:
        api_key, base_url = _settings(api_key, base_url)
        self._transport = SyncTransport(
            api_key=api_key,
            base_url=base_url,
            retry=RetryPolicy(max_network_retries=max_network_retries),
            timeout=timeout,
            http_client=http_client,
        )
        self.customers = Customers(self)
        self.events = Events(self)
        self.credits = Credits(self)
        self.wallet = Wallet(self)
        self.reservations = Reservations(self)
        self._buffer: EventBuffer | None = None
        self._flusher: BufferFlusher | None = None
        if buffer_path is not None:
            self._buffer = EventBuffer(buffer_path, max_events=buffer_max_events)
            self._flusher = BufferFlusher(
                self._buffer, send_batch=self._deliver_buffered, interval=flush_interval
            )
            self._flusher.start()
            # Events left by an earlier process go out now, not after the first interval.
            self._flusher.wake()

    # --- sending ------------------------------------------------------------------------------------

    def _request(self, request: ApiRequest) -> Any:
        return self._transport.request(request)

    def _send_events(
        self, events: Sequence[dict[str, Any]], *, idempotency_key: str | None = None
    ) -> list[EventResult]:
        if self._buffer is not None and self._buffer.pending_count():
            return self._buffer_events(events)
        try:
            body = self._request(requests.events_send(events, idempotency_key=idempotency_key))
        except TRANSIENT_FAILURES as failure:
            if self._buffer is None:
                raise
            logger.warning("Buffering %d events: %s", len(events), failure)
            return self._buffer_events(events)
        return cast(list[EventResult], body["results"])

    def _buffer_events(self, events: Sequence[dict[str, Any]]) -> list[EventResult]:
        if self._buffer is None or self._flusher is None:
            raise RuntimeError("This client has no buffer_path.")
        self._buffer.append(events)
        self._flusher.wake()
        return [buffered_result(event) for event in events]

    def _deliver_buffered(self, events: list[dict[str, Any]]) -> list[EventResult]:
        body = self._transport.request(requests.events_send(events), retry_policy=_FLUSHER_RETRY)
        return cast(list[EventResult], body["results"])

    # --- questions and holds ------------------------------------------------------------------------

    def check(
        self, *, customer: str, meter: str, quantity: Any = 1, properties: Mapping[str, Any] | None = None
    ) -> CheckResult:
        """May the customer do this now? Nothing is held; ``allowed`` and, when not, the 402 ``code``."""
        request = requests.check(customer=customer, meter=meter, quantity=quantity, properties=properties)
        return cast(CheckResult, self._request(request))

    def estimate(
        self, *, customer: str, meter: str, quantity: Any = 1, properties: Mapping[str, Any] | None = None
    ) -> Estimate:
        """What would this cost, and what would pay for it? Nothing is held."""
        request = requests.estimate(customer=customer, meter=meter, quantity=quantity, properties=properties)
        return cast(Estimate, self._request(request))

    def usage(self, customer: str, *, period: str | None = None) -> UsageSummary:
        """The customer's usage this period (or the one starting ``period``, ``YYYY-MM-DD``)."""
        return self.customers.usage(customer, period=period)

    def reserve(
        self,
        *,
        customer: str,
        meter: str,
        quantity: Any,
        user: str | None = None,
        properties: Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> Hold:
        """Hold what ``quantity`` would cost, now; use the result as a context manager.

        Raises the refusal (``InsufficientBalance``, ``HardLimitReached``, ...) before any work starts.
        """
        reservation = self.reservations.create(
            customer=customer,
            meter=meter,
            quantity=quantity,
            user=user,
            properties=properties,
            ttl_seconds=ttl_seconds,
            idempotency_key=idempotency_key,
        )
        return Hold(self.reservations, reservation)

    # --- metering a function ------------------------------------------------------------------------

    def metered(
        self,
        *,
        customer: str | ArgsValue,
        meter: str,
        quantity: Any = 1,
        cached: Callable[[Any], bool] | None = None,
        cache_hits: CacheHits = "record",
        user: str | ArgsValue | None = None,
        properties: Mapping[str, Any] | ArgsValue | None = None,
        idempotency_key: ArgsValue | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Record one event each time the decorated function returns; nothing when it raises.

        ``customer``, ``user``, ``properties`` and ``idempotency_key`` are values or functions of the
        call's arguments; ``quantity`` a number or a function of the result; ``cached(result)`` says a
        result came from a cache, recorded as ``cached`` (never billed) or, with
        ``cache_hits="skip"``, not at all. Works on ``async def`` functions too.
        """
        metering = Metering(
            customer=customer,
            meter=meter,
            quantity=quantity,
            cached=cached,
            cache_hits=cache_hits,
            user=user,
            properties=properties,
            idempotency_key=idempotency_key,
        )

        def decorate(function: Callable[P, R]) -> Callable[P, R]:
            if inspect.iscoroutinefunction(function):
                coroutine_function = cast(Callable[P, Awaitable[Any]], function)

                @functools.wraps(function)
                async def run_awaited(*args: P.args, **kwargs: P.kwargs) -> Any:
                    call = metering.start(args, kwargs)
                    result = await coroutine_function(*args, **kwargs)
                    await asyncio.to_thread(self._record_metered, call, result)
                    return result

                return cast(Callable[P, R], run_awaited)

            @functools.wraps(function)
            def run(*args: P.args, **kwargs: P.kwargs) -> R:
                call = metering.start(args, kwargs)
                result = function(*args, **kwargs)
                self._record_metered(call, result)
                return result

            return run

        return decorate

    def _record_metered(self, call: MeteredCall, result: Any) -> None:
        event = call.event_for(result)
        if event is None:
            return
        try:
            (outcome,) = self._send_events([event])
        except BillingError as failure:
            _log_metered_failure(call, failure)
            return
        _log_metered_result(call, outcome)

    # --- the buffer and the end ---------------------------------------------------------------------

    @property
    def buffer(self) -> EventBuffer | None:
        """The durable event buffer, when ``buffer_path`` was given (``pending_count()``, ``refused_events()``)."""
        return self._buffer

    def flush(self) -> int:
        """Deliver the buffered events that can be delivered now; returns how many are still waiting."""
        return self._flusher.flush() if self._flusher is not None else 0

    def close(self) -> None:
        """Deliver what can be delivered, stop the flusher and close connections. What is left stays on disk."""
        if self._flusher is not None:
            try:
                self._flusher.flush()
            finally:
                self._flusher.stop()
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        max_network_retries: int = DEFAULT_MAX_NETWORK_RETRIES,
        timeout: float = DEFAULT_TIMEOUT,
        buffer_path: str | os.PathLike[str] | None = None,
        buffer_max_events: int = DEFAULT_BUFFER_MAX_EVENTS,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        api_key, base_url = _settings(api_key, base_url)
        retry = RetryPolicy(max_network_retries=max_network_retries)
        self._transport = AsyncTransport(
            api_key=api_key, base_url=base_url, retry=retry, timeout=timeout, http_client=http_client
        )
        self.customers = AsyncCustomers(self)
        self.events = AsyncEvents(self)
        self.credits = AsyncCredits(self)
        self.wallet = AsyncWallet(self)
        self.reservations = AsyncReservations(self)
        self._buffer: EventBuffer | None = None
        self._flusher: BufferFlusher | None = None
        self._flusher_transport: SyncTransport | None = None
        if buffer_path is not None:
            # The flusher is a thread, independent of any event loop, with blocking connections of its own.
            self._flusher_transport = SyncTransport(
                api_key=api_key, base_url=base_url, retry=_FLUSHER_RETRY, timeout=timeout
            )
            self._buffer = EventBuffer(buffer_path, max_events=buffer_max_events)
            self._flusher = BufferFlusher(
                self._buffer, send_batch=self._deliver_buffered, interval=flush_interval
            )
            self._flusher.start()
            self._flusher.wake()

    # --- sending ------------------------------------------------------------------------------------

    async def _request(self, request: ApiRequest) -> Any:
        return await self._transport.request(request)

    async def _send_events(
        self, events: Sequence[dict[str, Any]], *, idempotency_key: str | None = None
    ) -> list[EventResult]:
        if self._buffer is not None:
            pending: int = await asyncio.to_thread(self._buffer.pending_count)
            if pending:
                return await self._buffer_events(events)
        try:
            body = await self._request(requests.events_send(events, idempotency_key=idempotency_key))
        except TRANSIENT_FAILURES as failure:
            if self._buffer is None:
                raise
            logger.warning("Buffering %d events: %s", len(events), failure)
            return await self._buffer_events(events)
        return cast(list[EventResult], body["results"])

    async def _buffer_events(self, events: Sequence[dict[str, Any]]) -> list[EventResult]:
        if self._buffer is None or self._flusher is None:
            raise RuntimeError("This client has no buffer_path.")
        await asyncio.to_thread(self._buffer.append, events)
        self._flusher.wake()
        return [buffered_result(event) for event in events]

    def _deliver_buffered(self, events: list[dict[str, Any]]) -> list[EventResult]:
        if self._flusher_transport is None:
            raise RuntimeError("This client has no buffer_path.")
        body = self._flusher_transport.request(requests.events_send(events))
        return cast(list[EventResult], body["results"])

    # --- questions and holds ------------------------------------------------------------------------

    async def check(
        self, *, customer: str, meter: str, quantity: Any = 1, properties: Mapping[str, Any] | None = None
    ) -> CheckResult:
        """May the customer do this now? Nothing is held; ``allowed`` and, when not, the 402 ``code``."""
        request = requests.check(customer=customer, meter=meter, quantity=quantity, properties=properties)
        return cast(CheckResult, await self._request(request))

    async def estimate(
        self, *, customer: str, meter: str, quantity: Any = 1, properties: Mapping[str, Any] | None = None
    ) -> Estimate:
        """What would this cost, and what would pay for it? Nothing is held."""
        request = requests.estimate(customer=customer, meter=meter, quantity=quantity, properties=properties)
        return cast(Estimate, await self._request(request))

    async def usage(self, customer: str, *, period: str | None = None) -> UsageSummary:
        """The customer's usage this period (or the one starting ``period``, ``YYYY-MM-DD``)."""
        return await self.customers.usage(customer, period=period)

    def reserve(
        self,
        *,
        customer: str,
        meter: str,
        quantity: Any,
        user: str | None = None,
        properties: Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> PendingHold:
        """``async with client.reserve(...) as hold:`` or ``hold = await client.reserve(...)``.

        Raises the refusal (``InsufficientBalance``, ``HardLimitReached``, ...) before the block runs.
        """

        async def create() -> AsyncHold:
            reservation = await self.reservations.create(
                customer=customer,
                meter=meter,
                quantity=quantity,
                user=user,
                properties=properties,
                ttl_seconds=ttl_seconds,
                idempotency_key=idempotency_key,
            )
            return AsyncHold(self.reservations, reservation)

        return PendingHold(create)

    # --- metering a function ------------------------------------------------------------------------

    def metered(
        self,
        *,
        customer: str | ArgsValue,
        meter: str,
        quantity: Any = 1,
        cached: Callable[[Any], bool] | None = None,
        cache_hits: CacheHits = "record",
        user: str | ArgsValue | None = None,
        properties: Mapping[str, Any] | ArgsValue | None = None,
        idempotency_key: ArgsValue | None = None,
    ) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
        """``Client.metered`` for ``async def`` functions (a plain function needs ``Client.metered``)."""
        metering = Metering(
            customer=customer,
            meter=meter,
            quantity=quantity,
            cached=cached,
            cache_hits=cache_hits,
            user=user,
            properties=properties,
            idempotency_key=idempotency_key,
        )

        def decorate(function: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
            if not inspect.iscoroutinefunction(function):
                raise TypeError(
                    f"AsyncClient.metered decorates async functions; {function.__qualname__} is not one "
                    "(use Client.metered)."
                )

            @functools.wraps(function)
            async def run(*args: P.args, **kwargs: P.kwargs) -> R:
                call = metering.start(args, kwargs)
                result = await function(*args, **kwargs)
                await self._record_metered(call, result)
                return result

            return run

        return decorate

    async def _record_metered(self, call: MeteredCall, result: Any) -> None:
        event = call.event_for(result)
        if event is None:
            return
        try:
            (outcome,) = await self._send_events([event])
        except BillingError as failure:
            _log_metered_failure(call, failure)
            return
        _log_metered_result(call, outcome)

    # --- the buffer and the end ---------------------------------------------------------------------

    @property
    def buffer(self) -> EventBuffer | None:
        """The durable event buffer, when ``buffer_path`` was given (``pending_count()``, ``refused_events()``)."""
        return self._buffer

    async def flush(self) -> int:
        """Deliver the buffered events that can be delivered now; returns how many are still waiting."""
        if self._flusher is None:
            return 0
        return await asyncio.to_thread(self._flusher.flush)

    async def close(self) -> None:
        """Deliver what can be delivered, stop the flusher and close connections. What is left stays on disk."""
        if self._flusher is not None:
            try:
                await asyncio.to_thread(self._flusher.flush)
            finally:
                await asyncio.to_thread(self._flusher.stop)
        if self._flusher_transport is not None:
            self._flusher_transport.close()
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
