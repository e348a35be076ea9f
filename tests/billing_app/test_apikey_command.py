"""``manage.py apikey_create``: the secret is printed once and only its hash is stored."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from billing_app.models import ApiKey, api_key_hash

pytestmark = pytest.mark.django_db


def create(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip()


def test_apikey_create_prints_a_secret_that_authenticates_and_stores_only_its_hash():
    secret = create("apikey_create", "--name", "production backend")

    key = ApiKey.objects.get(name="production backend")
    assert key.key_hash == api_key_hash(secret)
    assert secret not in (key.key_hash, key.prefix) and secret.startswith(key.prefix)
    assert key.rate_limit_per_minute is None
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/api/v1/customers/nobody").status_code == 404  # authenticated, then not found


def test_apikey_create_sets_the_keys_own_rate_limit():
    create("apikey_create", "--name", "batch importer", "--rate-limit-per-minute", "120")

    assert ApiKey.objects.get(name="batch importer").rate_limit_per_minute == 120


def test_the_first_name_of_the_command_still_works():
    create("api_key_create", "legacy script")

    assert ApiKey.objects.filter(name="legacy script").exists()


def test_a_key_needs_a_name():
    with pytest.raises(CommandError, match="--name"):
        create("apikey_create")
