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


@pytest.mark.parametrize(("debug", "prefix"), [(True, "sk_test_"), (False, "sk_live_")])
def test_the_key_mode_follows_debug(settings, debug, prefix):
    settings.DEBUG = debug

    assert create("apikey_create", "--name", "backend").startswith(prefix)


@pytest.mark.parametrize(("debug", "prefix"), [(True, "sk_test_"), (False, "sk_live_")])
def test_a_key_made_in_the_admin_follows_debug_too(admin_client, settings, debug, prefix):
    settings.DEBUG = debug

    response = admin_client.post(
        "/admin/billing_app/apikey/add/", {"name": "admin-made", "rate_limit_per_minute": ""}, follow=True
    )

    assert response.status_code == 200
    assert ApiKey.objects.get(name="admin-made").prefix.startswith(prefix)
    assert any(prefix in str(message) for message in response.context["messages"])


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_the_authorization_scheme_is_case_insensitive(scheme):
    secret = create("apikey_create", "--name", "backend")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{scheme} {secret}")

    assert client.get("/api/v1/customers/nobody").status_code == 404
