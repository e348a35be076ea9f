"""Bearer-key authentication for the metering API."""

from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from billing_app.models import ApiKey, api_key_hash
from core.sql_rows import ModelColumns, selects_run


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


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[ApiClient, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode(errors="replace")
        scheme, _, raw_key = header.partition(" ")
        # RFC 9110: the scheme is case-insensitive; clients send "bearer" as often as "Bearer".
        if scheme.lower() != self.keyword.lower() or not raw_key.strip():
            return None
        api_key = api_key_by_hash(api_key_hash(raw_key.strip()))
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.", code="invalid_api_key")
        # Recording use at minute resolution keeps this from being a write on every request.
        now = timezone.now()
        if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > 60:
            ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        return ApiClient(api_key), api_key

    def authenticate_header(self, request: Any) -> str:
        return self.keyword


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents the Bearer key in the OpenAPI schema."""

    target_class = "billing_app.api_auth.ApiKeyAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A secret API key: `Authorization: Bearer sk_live_...`",
        }
