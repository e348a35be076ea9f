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
the primary for ``REPLICA_PIN_SECONDS`` so that it reads its own writes (``ReplicaReadsMiddleware``).
"""

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core import signing
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, transaction
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


@dataclass
class ReadScope:
    """Where the reads of one request (or one task) may go. ``wrote`` turns true at its first ORM write of a
    model the replica serves."""

    wrote: bool = False


_scope: ContextVar[ReadScope | None] = ContextVar("replica_read_scope", default=None)


def replica_configured() -> bool:
    return REPLICA in settings.DATABASES


@contextmanager
def replica_reads() -> Iterator[ReadScope]:
    """Let the ORM reads of the block go to the replica (when one is configured), on the rules above."""
    scope = ReadScope()
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
