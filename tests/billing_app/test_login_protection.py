"""Brute-force protection: failed logins and password-reset requests lock out one username and address."""

import re
from datetime import timedelta

import pytest
import time_machine
from django.core import mail
from django.utils import timezone

from tests.customers.factories import UserFactory

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
ADMIN_LOGIN = "/admin/login/"
RESET = "/accounts/password_reset/"


def _log_in(client, username, password, *, url=LOGIN, address="203.0.113.7"):
    return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=address)


def test_failed_logins_lock_out_the_username_and_address_even_with_the_right_password(client, settings):
    UserFactory(username="maya")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        response = _log_in(client, "maya", "wrong")
        assert response.status_code == 200
        assert b"alert-danger" in response.content

    locking = _log_in(client, "maya", "wrong")
    with_the_right_password = _log_in(client, "maya", "password")

    for response in (locking, with_the_right_password):
        assert response.status_code == 429
        assert b"Too many failed logins for this account from your address" in response.content
        assert b"15 minutes" in response.content
    assert "_auth_user_id" not in client.session


def test_after_the_lockout_the_right_password_works_again(client, settings):
    UserFactory(username="maya")
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        for _ in range(settings.AXES_FAILURE_LIMIT):
            _log_in(client, "maya", "wrong")
        assert _log_in(client, "maya", "password").status_code == 429

    # A refused attempt during the lockout starts its 15 minutes again, so count from the last one.
    with time_machine.travel(start + settings.AXES_COOLOFF_TIME + timedelta(seconds=1), tick=False):
        response = _log_in(client, "maya", "password")

    assert response.status_code == 302
    assert client.session["_auth_user_id"]


def test_a_lockout_is_for_one_username_from_one_address(client, settings):
    UserFactory(username="maya")
    UserFactory(username="raj")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _log_in(client, "maya", "wrong")

    assert _log_in(client, "maya", "password", address="198.51.100.2").status_code == 302
    client.logout()
    assert _log_in(client, "raj", "password").status_code == 302


def test_a_success_clears_the_count_of_failures(client, settings):
    UserFactory(username="maya")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        _log_in(client, "maya", "wrong")
    assert _log_in(client, "maya", "password").status_code == 302
    client.logout()

    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        _log_in(client, "maya", "wrong")
    assert _log_in(client, "maya", "password").status_code == 302


def test_the_admin_login_is_locked_out_too(client, settings):
    UserFactory(username="ops", is_staff=True)
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _log_in(client, "ops", "wrong", url=ADMIN_LOGIN)

    response = _log_in(client, "ops", "password", url=ADMIN_LOGIN)

    assert response.status_code == 429
    assert b"Too many failed logins" in response.content


def test_the_address_is_not_taken_from_a_header_the_client_writes(client, settings):
    UserFactory(username="maya")
    for n in range(settings.AXES_FAILURE_LIMIT):
        client.post(LOGIN, {"username": "maya", "password": "wrong"}, HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")

    response = client.post(
        LOGIN, {"username": "maya", "password": "password"}, HTTP_X_FORWARDED_FOR="192.0.2.99"
    )

    assert response.status_code == 429


def test_password_reset_requests_are_limited_per_email_and_address(client, settings):
    UserFactory(username="maya")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        assert client.post(RESET, {"email": "maya@example.com"}).status_code == 302

    refused = client.post(RESET, {"email": "MAYA@example.com "})

    assert refused.status_code == 429
    assert b"Too many password-reset requests" in refused.content
    assert len(mail.outbox) == settings.AXES_FAILURE_LIMIT
    assert client.post(RESET, {"email": "raj@example.com"}).status_code == 302


def test_a_new_password_by_email_lifts_a_login_lockout(client, settings):
    UserFactory(username="maya")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _log_in(client, "maya", "wrong", address="127.0.0.1")
    client.post(RESET, {"email": "maya@example.com"})
    link = re.search(r"https?://\S+/accounts/reset/\S+/", mail.outbox[0].body).group(0)
    form = client.get(link, follow=True)

    client.post(
        form.redirect_chain[-1][0],
        {"new_password1": "a-long-new-passphrase", "new_password2": "a-long-new-passphrase"},
    )

    assert _log_in(client, "maya", "a-long-new-passphrase", address="127.0.0.1").status_code == 302
