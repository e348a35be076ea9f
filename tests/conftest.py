"""Fixtures shared by the whole suite. App-specific factories live beside the app's tests."""

import pytest
from rest_framework.test import APIClient

from billing_app.models import ApiKey

pytest_plugins = ["tests.catalog_fixtures", "tests.stripe_fake.plugin"]


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
