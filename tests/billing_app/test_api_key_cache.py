"""A web process trusts an API key it has read for API_KEY_CACHE_SECONDS; revocation is honoured within it.

Each test's clock stands still (time-machine) and moves on purpose, so the bound is exact.
"""

from collections.abc import Iterator
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from billing_app.models import ApiKey

pytestmark = pytest.mark.django_db

CHECK = "/api/v1/check"


@pytest.fixture(autouse=True)
def clock() -> Iterator[time_machine.Traveller]:
    with time_machine.travel(timezone.now() + timedelta(minutes=1), tick=False) as traveller:
        yield traveller


@pytest.fixture
def acme(pro_plan, make_customer):
    return make_customer("pro")


@pytest.fixture
def key_and_client(db) -> tuple[ApiKey, APIClient]:
    api_key, raw_key = ApiKey.generate(name="backend")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return api_key, client


def check(client: APIClient) -> int:
    return client.post(CHECK, {"customer": "acme", "meter": "api_call"}, format="json").status_code


def key_reads(client: APIClient) -> int:
    """How many times answering one check read the API key table."""
    with CaptureQueriesContext(connection) as queries:
        assert check(client) == 200
    return sum("FROM billing_app_apikey" in query["sql"] for query in queries.captured_queries)


def test_a_key_is_read_once_and_trusted_within_the_bound(settings, acme, key_and_client, clock):
    settings.API_KEY_CACHE_SECONDS = 5
    _, client = key_and_client
    assert key_reads(client) == 1
    clock.shift(timedelta(seconds=4))
    assert key_reads(client) == 0
    clock.shift(timedelta(seconds=1))
    assert key_reads(client) == 1


def test_a_key_revoked_elsewhere_is_refused_within_the_bound(settings, acme, key_and_client, clock):
    settings.API_KEY_CACHE_SECONDS = 5
    api_key, client = key_and_client
    assert check(client) == 200
    # Revoked by another process: this one's memory is not told.
    ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())

    clock.shift(timedelta(seconds=4.9))
    assert check(client) == 200
    clock.shift(timedelta(seconds=0.1))
    response = client.post(CHECK, {"customer": "acme", "meter": "api_call"}, format="json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    clock.shift(timedelta(seconds=60))
    assert check(client) == 401


def test_a_key_revoked_in_admin_is_refused_at_once(settings, acme, key_and_client, admin_client):
    settings.API_KEY_CACHE_SECONDS = 5
    api_key, client = key_and_client
    assert check(client) == 200
    admin_client.post(
        "/admin/billing_app/apikey/", {"action": "revoke", "_selected_action": [api_key.pk]}, follow=True
    )
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert check(client) == 401


def test_a_limit_changed_in_admin_applies_at_once(settings, acme, key_and_client, admin_client):
    settings.API_KEY_CACHE_SECONDS = 5
    api_key, client = key_and_client
    assert check(client) == 200
    admin_client.post(
        f"/admin/billing_app/apikey/{api_key.pk}/change/", {"name": "backend", "rate_limit_per_minute": "1"}
    )
    assert check(client) == 429


def test_without_the_cache_a_revoked_key_is_refused_at_once(settings, acme, key_and_client):
    settings.API_KEY_CACHE_SECONDS = 0
    api_key, client = key_and_client
    assert check(client) == 200
    ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())
    assert check(client) == 401
