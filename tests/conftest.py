"""Fixtures shared by the whole suite. App-specific factories live beside the app's tests."""

import uuid

import pytest
from rest_framework.test import APIClient

from billing_app.api_auth import api_keys_forget
from billing_app.models import ApiKey

pytest_plugins = ["tests.catalog_fixtures", "tests.stripe_fake.plugin"]


@pytest.fixture(autouse=True)
def cache_of_its_own(settings) -> None:
    """Each test counts API requests in its own cache namespace, so no rate-limit count carries over.

    Clearing the cache instead would be FLUSHDB on a Redis database that parallel test runs share. The
    API keys this process trusts are forgotten too: a key from an earlier test's rolled-back data is gone.
    """
    settings.CACHES = {
        "default": {**settings.CACHES["default"], "KEY_PREFIX": f"test-{uuid.uuid4().hex}"},
    }
    api_keys_forget()


@pytest.fixture
def api_key(db) -> str:
    """A raw API key whose hash is stored, as an operator would create one."""
    _, raw_key = ApiKey.generate(name="test backend")
    return raw_key


@pytest.fixture
def api(api_key) -> APIClient:
    """A client of the metering API, authenticated with a Bearer key."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key}")
    return client
