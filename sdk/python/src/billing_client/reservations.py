"""A reservation as a context manager: hold before the work, commit what it used, release otherwise.

``client.reserve(...)`` takes the hold at once (a refusal raises before any work starts) and returns a
``Hold``. Leaving its ``with`` block:

- after ``hold.commit(quantity)`` or ``hold.release()``: nothing more to do;
- by an exception: the hold is released and the exception goes on, so a failed call bills nothing;
- without either: the hold is released and ``UncommittedReservationWarning`` says the work was not
  recorded, which is nearly always a forgotten commit.

A release that fails there (the server unreachable) is logged, never raised over the block's own outcome:
the hold expires by itself at ``expires_at``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from billing_client.errors import BillingError
from billing_client.types import Reservation, ReservationCommit, ReservationStatus

if TYPE_CHECKING:
    from billing_client._async_resources import AsyncReservations
    from billing_client._resources import Reservations

logger = logging.getLogger("billing_client")


class UncommittedReservationWarning(UserWarning):
    """A reservation's block ended without a commit or a release; the hold was released."""


class _HoldState:
    def __init__(self, reservation: Reservation) -> None:
        self.reservation: Reservation = reservation
        self.settled = reservation["status"] != "held"

    @property
    def id(self) -> str:
        return self.reservation["id"]

    @property
    def status(self) -> ReservationStatus:
        return self.reservation["status"]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.status}>"

    def _log_release_failure(self, failure: BillingError) -> None:
        logger.warning(
            "Releasing reservation %s failed (%s); it expires by itself at %s",
            self.id,
            failure,
            self.reservation["expires_at"],
        )

    def _warn_uncommitted(self) -> None:
        warnings.warn(
            f"Reservation {self.id} was neither committed nor released in its block; it was released "
            "and the work was not recorded. Call hold.commit(quantity) when the work is done.",
            UncommittedReservationWarning,
            stacklevel=3,
        )


class Hold(_HoldState):
    def __init__(self, reservations: Reservations, reservation: Reservation) -> None:
        super().__init__(reservation)
        self._reservations = reservations

    def commit(self, quantity: Any, *, idempotency_key: str | None = None) -> ReservationCommit:
        """Record what the work used (at most what was held); the rest goes back."""
        committed = self._reservations.commit(self.id, quantity=quantity, idempotency_key=idempotency_key)
        self.reservation = committed
        self.settled = True
        return committed

    def release(self) -> Reservation:
        released = self._reservations.release(self.id)
        self.reservation = released
        self.settled = True
        return released

    def __enter__(self) -> Hold:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.settled:
            return
        try:
            self.release()
        except BillingError as failure:
            self._log_release_failure(failure)
        if exc_type is None:
            self._warn_uncommitted()


class AsyncHold(_HoldState):
    def __init__(self, reservations: AsyncReservations, reservation: Reservation) -> None:
        super().__init__(reservation)
        self._reservations = reservations

    async def commit(self, quantity: Any, *, idempotency_key: str | None = None) -> ReservationCommit:
        """Record what the work used (at most what was held); the rest goes back."""
        committed = await self._reservations.commit(
            self.id, quantity=quantity, idempotency_key=idempotency_key
        )
        self.reservation = committed
        self.settled = True
        return committed

    async def release(self) -> Reservation:
        released = await self._reservations.release(self.id)
        self.reservation = released
        self.settled = True
        return released

    async def __aenter__(self) -> AsyncHold:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.settled:
            return
        try:
            await self.release()
        except BillingError as failure:
            self._log_release_failure(failure)
        if exc_type is None:
            self._warn_uncommitted()


class PendingHold:
    """What ``AsyncClient.reserve(...)`` returns: ``await`` it for the hold, or ``async with`` it.

    The reservation is requested on ``await`` or on entering the block, so a refusal raises before the
    block runs.
    """

    def __init__(self, create: Callable[[], Awaitable[AsyncHold]]) -> None:
        self._create = create
        self._hold: AsyncHold | None = None

    def __await__(self) -> Generator[Any, None, AsyncHold]:
        return self._create().__await__()

    async def __aenter__(self) -> AsyncHold:
        self._hold = await self._create()
        return self._hold

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._hold is not None:
            await self._hold.__aexit__(exc_type, exc, traceback)
