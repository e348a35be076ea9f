"""Reads from a streaming replica, money from the primary (``DATABASE_REPLICA_URL``).

A read goes to the replica only inside a ``replica_reads()`` scope: the customer pages and the API's GET
requests (``ReplicaReadsMiddleware``), reconciliation's reading of what we sent to Stripe, and the reports
that run as tasks. Everything else reads the primary, and so do these whenever

- the read is inside a transaction on the primary: a money decision reads what it locked (lock, read,
  decide, write), never a copy that may be seconds old;
- the scope has written: the reads after a write see it;
- the model is one whose staleness would be a security or money question rather than an old number on a
  page: API keys (a revoked key must stop at once), stored idempotent responses, sessions, users and logins.

The hot paths' hand-written SQL (``core.sql_rows``, ``usage.sql_reads``, ``usage.ingest``) uses
``django.db.connection``, the primary, by design: it serves /check, reservations and ingest, which decide
about money.

A replica is behind by its replay lag (milliseconds when healthy). The client that just wrote is pinned to
the primary for ``REPLICA_PIN_SECONDS`` so that it reads its own writes (``ReplicaReadsMiddleware``). A
replica that falls further behind than ``REPLICA_MAX_LAG_SECONDS``, or cannot be reached, serves nobody: the
scopes opened meanwhile read the primary (``replica_lag_seconds``), so a stalled replica costs the primary
some load rather than showing customers old numbers, and a replica that is down costs no request an error.
"""

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core import signing
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db.models import Model
from django.http import HttpRequest, HttpResponse

from billing_app.api_requests import request_may_write

PRIMARY = DEFAULT_DB_ALIAS
REPLICA = "replica"
# The apps whose reads may be a replica's; of them, the models that always read the primary.
REPLICA_APPS = frozenset({"usage", "customers", "plans", "billing_app"})
PRIMARY_ONLY_MODELS = frozenset({"billing_app.apikey", "billing_app.idempotencykey"})
PIN_COOKIE = "replica_pin"
SAFE_METHODS = frozenset({"GET", "HEAD"})
# How often a process asks the replica how far behind it is: often enough that a stall is noticed within a
# second, rarely enough that the question costs nothing next to the reads it routes.
LAG_CHECK_SECONDS = 1.0

logger = logging.getLogger(__name__)


@dataclass
class ReadScope:
    """Where the reads of one request (or one task) may go. ``replica`` is decided once, when the scope
    opens, so that one page never mixes the two databases; ``wrote`` turns true at its first ORM write of a
    model the replica serves."""

    replica: bool = False
    wrote: bool = False


_scope: ContextVar[ReadScope | None] = ContextVar("replica_read_scope", default=None)


def replica_configured() -> bool:
    return REPLICA in settings.DATABASES


# How far behind the replica is, in seconds: nothing while it has replayed all the WAL it received and is
# still receiving; otherwise the age of the last transaction it replayed. That second figure overstates the
# lag for an instant after a quiet spell on the primary (the last transaction is old while the new one is
# replayed), which only sends a second's reads to the primary. A server that is not in recovery (promoted, or
# the primary itself under test) is not behind.
LAG_SQL = """
SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN 0
    WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver)
        THEN 0
    ELSE COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8, 'Infinity')
END
"""


@dataclass
class _LagReading:
    seconds: float = 0.0
    read_at: float = -math.inf  # time.monotonic(); never read yet


_lag = _LagReading()


def _replica_unreachable() -> None:
    logger.warning("the replica cannot be reached; reads go to the primary", exc_info=True)
    connections[REPLICA].close()  # a broken connection is opened anew at the next question


def replica_lag_seconds() -> float:
    """The replica's replay lag, read at most every ``LAG_CHECK_SECONDS`` per process; infinite when the
    replica cannot be asked (down, restarting, refusing connections)."""
    now = time.monotonic()
    if now - _lag.read_at < LAG_CHECK_SECONDS:
        return _lag.seconds
    try:
        with connections[REPLICA].cursor() as cursor:
            cursor.execute(LAG_SQL)
            (seconds,) = cursor.fetchone()
    except DatabaseError:
        _replica_unreachable()
        seconds = math.inf
    limit = settings.REPLICA_MAX_LAG_SECONDS
    if seconds > limit >= _lag.seconds:
        logger.warning("the replica is %.1f s behind; reads go to the primary until it catches up", seconds)
    elif seconds <= limit < _lag.seconds:
        logger.warning("the replica is back within %s s; it serves reads again", limit)
    _lag.seconds, _lag.read_at = float(seconds), now
    return _lag.seconds


def replica_caught_up() -> bool:
    """Whether the replica has replayed everything the primary had written when asked: what a task that
    compares the ledger with another system needs, where any lag at all would show as a difference."""
    with connections[PRIMARY].cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_lsn()::text WHERE NOT pg_is_in_recovery()")
        position = cursor.fetchone()
    if position is None:  # the "primary" is itself a standby: nothing to compare with
        return False
    try:
        with connections[REPLICA].cursor() as cursor:
            cursor.execute(
                "SELECT NOT pg_is_in_recovery() OR pg_last_wal_replay_lsn() >= %s::pg_lsn", [position[0]]
            )
            (caught_up,) = cursor.fetchone()
    except DatabaseError:
        _replica_unreachable()
        return False
    return bool(caught_up)


@contextmanager
def replica_reads(*, caught_up: bool = False) -> Iterator[ReadScope]:
    """Let the ORM reads of the block go to the replica (when one is configured and is within
    ``REPLICA_MAX_LAG_SECONDS``), on the rules above. With ``caught_up``, only when the replica has replayed
    all the primary had written as the block opens (``replica_caught_up``)."""
    scope = ReadScope()
    if replica_configured():
        scope.replica = (
            replica_caught_up() if caught_up else replica_lag_seconds() <= settings.REPLICA_MAX_LAG_SECONDS
        )
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


def _replica_may_serve(model: type[Model]) -> bool:
    meta = model._meta
    return meta.app_label in REPLICA_APPS and meta.label_lower not in PRIMARY_ONLY_MODELS


class PrimaryReplicaRouter:
    """Django's database router for ``DATABASE_REPLICA_URL`` (installed only when it is set)."""

    def db_for_read(self, model: type[Model], **hints: Any) -> str:
        scope = _scope.get()
        if (
            scope is None
            or not scope.replica
            or scope.wrote
            or not _replica_may_serve(model)
            or transaction.get_connection(PRIMARY).in_atomic_block
        ):
            return PRIMARY
        return REPLICA

    def db_for_write(self, model: type[Model], **hints: Any) -> str:
        scope = _scope.get()
        # Only a write the replica would serve stale matters; an API key's last use or a session is read
        # from the primary anyway, and pinning on them would pin every request.
        if scope is not None and _replica_may_serve(model):
            scope.wrote = True
        return PRIMARY

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool:
        # The replica holds the primary's rows: an instance read there may be saved to, or joined with, the primary.
        return True

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return db == PRIMARY


# --- read-your-writes ------------------------------------------------------------------------------


def _api_pin_key(request: HttpRequest) -> str | None:
    """The cache key that pins an API client (by its Authorization header, hashed), if it sent one."""
    authorization = request.headers.get("Authorization", "")
    if not authorization:
        return None
    return "replica-pin:" + hashlib.sha256(authorization.encode()).hexdigest()[:32]


def _pinned(request: HttpRequest) -> bool:
    key = _api_pin_key(request)
    if key is not None:
        return bool(cache.get(key))
    try:
        request.get_signed_cookie(PIN_COOKIE, salt=PIN_COOKIE, max_age=settings.REPLICA_PIN_SECONDS)
    except (KeyError, signing.BadSignature):
        return False
    return True


def _pin(request: HttpRequest, response: HttpResponse) -> None:
    seconds = settings.REPLICA_PIN_SECONDS
    key = _api_pin_key(request)
    if key is not None:
        cache.set(key, 1, timeout=seconds)
    else:
        response.set_signed_cookie(
            PIN_COOKIE,
            "1",
            salt=PIN_COOKIE,
            max_age=seconds,
            httponly=True,
            samesite="Lax",
            secure=settings.SESSION_COOKIE_SECURE,
        )


class ReplicaReadsMiddleware:
    """GET and HEAD requests read the replica, unless their client wrote in the last ``REPLICA_PIN_SECONDS``.

    A request that may have written (any other method but /check's and /estimate's questions, or a GET whose
    ORM wrote) pins its client to the
    primary: an API client by its key, a browser by a signed cookie that expires with the pin. Without
    ``DATABASE_REPLICA_URL`` it does nothing.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not replica_configured():
            return self.get_response(request)
        if request.method in SAFE_METHODS and not _pinned(request):
            with replica_reads() as scope:
                response = self.get_response(request)
            wrote = scope.wrote
        else:
            response = self.get_response(request)
            # Ingest and the money paths write through hand-written SQL the router never sees.
            wrote = request_may_write(request)
        if wrote:
            _pin(request, response)
        return response
