"""Bearer-key authentication for the metering API."""

from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from billing_app.models import ApiKey, ApiKeyKind, api_key_hash
from core.sql_rows import ModelColumns, selects_run

if TYPE_CHECKING:
    # rest_framework.views imports this module while it defines APIView (DEFAULT_PERMISSION_CLASSES).
    from rest_framework.views import APIView


class ApiClient:
    """The authenticated caller of the API: a backend holding a key, not a person."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, api_key: ApiKey) -> None:
        self.api_key = api_key

    def __str__(self) -> str:
        return str(self.api_key)


API_KEY = ModelColumns(ApiKey, "k")


def api_key_by_hash(key_hash: str) -> ApiKey | None:
    """The live key with this hash. Written out: every API request makes this read first."""
    sql = (
        f"SELECT {API_KEY.sql} FROM {ApiKey._meta.db_table} k WHERE k.key_hash = %s AND k.revoked_at IS NULL"  # noqa: S608
    )
    [rows] = selects_run([(sql, [key_hash])])
    return API_KEY.build(rows[0]) if rows else None


# Live keys this process has read, by hash, with when they were read. Every API request authenticates, and
# reading the key was a round trip of its own on each; a key read less than API_KEY_CACHE_SECONDS ago is
# trusted without it. So a key revoked elsewhere is refused by this process at most that many seconds
# later; the process that revokes it (admin) forgets it at once (``api_keys_forget``).
_live_keys: dict[str, tuple[ApiKey, datetime]] = {}
# Keys are few; the bound only keeps a stream of distinct keys from growing the dict without end.
_LIVE_KEYS_MAX = 1000


def api_key_live(key_hash: str, *, now: datetime) -> ApiKey | None:
    """The live key with this hash, from this process's memory if read within API_KEY_CACHE_SECONDS."""
    trusted_seconds = settings.API_KEY_CACHE_SECONDS
    cached = _live_keys.get(key_hash)
    if cached is not None and 0 <= (now - cached[1]).total_seconds() < trusted_seconds:
        return cached[0]
    api_key = api_key_by_hash(key_hash)
    if api_key is None:
        _live_keys.pop(key_hash, None)
    elif trusted_seconds > 0:
        if len(_live_keys) >= _LIVE_KEYS_MAX:
            _live_keys.clear()
        _live_keys[key_hash] = (api_key, now)
    return api_key


def api_keys_forget() -> None:
    """Read every key from the database again on its next use: after keys were revoked or changed here."""
    _live_keys.clear()


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[ApiClient, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode(errors="replace")
        scheme, _, raw_key = header.partition(" ")
        # RFC 9110: the scheme is case-insensitive; clients send "bearer" as often as "Bearer".
        if scheme.lower() != self.keyword.lower() or not raw_key.strip():
            return None
        now = timezone.now()
        api_key = api_key_live(api_key_hash(raw_key.strip()), now=now)
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.", code="invalid_api_key")
        # Recording use at minute resolution keeps this from being a write on every request.
        if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > 60:
            ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
            api_key.last_used_at = now
        return ApiClient(api_key), api_key

    def authenticate_header(self, request: Any) -> str:
        return self.keyword


# What a publishable key may call, by URL name and method: read its customer's usage, and ask /check about
# it. Both answer a frontend's "how much is used and left"; neither writes nor lists.
PUBLISHABLE_KEY_ENDPOINTS = {("api-customer-usage", "GET"), ("api-check", "POST")}


class ApiKeyScope(permissions.BasePermission):
    """Secret keys may call every endpoint; a publishable key only ``PUBLISHABLE_KEY_ENDPOINTS`` for its customer.

    Anything else is refused 403 ``forbidden``, before the view reads or writes anything.
    """

    def has_permission(self, request: Request, view: "APIView") -> bool:
        api_key = request.auth
        if not isinstance(api_key, ApiKey) or api_key.kind == ApiKeyKind.SECRET:
            return True
        match = request.resolver_match
        url_name = match.url_name if match else None
        if (url_name, request.method) not in PUBLISHABLE_KEY_ENDPOINTS:
            raise exceptions.PermissionDenied(
                "A publishable key may only read its customer's usage (GET /api/v1/customers/{id}/usage) "
                "and ask POST /api/v1/check about it.",
                code="forbidden",
            )
        if url_name == "api-customer-usage":
            asked = view.kwargs.get("external_id")
        else:
            asked = request.data.get("customer") if isinstance(request.data, dict) else None
        if api_key.customer is None or asked != api_key.customer.external_id:
            raise exceptions.PermissionDenied(
                "A publishable key may only ask about its own customer.", code="forbidden"
            )
        return True


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents the Bearer key in the OpenAPI schema."""

    target_class = "billing_app.api_auth.ApiKeyAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: `Authorization: Bearer sk_live_...` (secret), or a customer's "
            "publishable key `pk_live_...`, which may only read that customer's usage and ask /check.",
        }
