"""Brute-force protection of the login and password-reset forms, on django-axes (settings: ``AXES_*``).

Failed logins are counted per username and address by axes' authentication backend; after
``LOGIN_FAILURE_LIMIT`` of them that pair is refused, with the right password too, for
``LOGIN_LOCKOUT_MINUTES``. Lockouts are rows in the database (admin, *Access attempts*); deleting one, or
``manage.py axes_reset``, lifts it.
"""

from typing import Any

from axes.handlers.proxy import AxesProxyHandler
from axes.utils import reset as axes_reset
from django.conf import settings
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

LOCKED_OUT_STATUS = 429
# Password-reset requests are counted under this prefix and the email, apart from logins.
RESET_REQUESTS_PREFIX = "password-reset:"


def client_address(request: HttpRequest) -> str:
    """The address a login attempt came from, as our own server or proxy saw it.

    Behind a TLS proxy (``BEHIND_TLS_PROXY``), the last X-Forwarded-For entry is the one the proxy added;
    the ones before it are whatever the client sent.
    """
    if settings.BEHIND_TLS_PROXY:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if last := forwarded.rsplit(",", 1)[-1].strip():
            return last
    return str(request.META.get("REMOTE_ADDR", ""))


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: Any = None
) -> HttpResponse:
    """The page a locked-out login or password reset gets (``AXES_LOCKOUT_CALLABLE``): 429, and for how long."""
    username = credentials.get("username", "") if isinstance(credentials, dict) else ""
    context = {
        "lockout_minutes": settings.LOGIN_LOCKOUT_MINUTES,
        "password_reset": str(username).startswith(RESET_REQUESTS_PREFIX),
    }
    return render(request, "registration/locked_out.html", context, status=LOCKED_OUT_STATUS)


class PasswordResetView(auth_views.PasswordResetView):
    """Django's password reset, at most ``LOGIN_FAILURE_LIMIT`` requests per email and address per lockout.

    Each request may send an email, so without a limit the form floods someone's inbox. Axes counts the
    requests as it counts failed logins, under a username of their own, so they lock out alike and show in
    admin beside them.
    """

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        email = str(request.POST.get("email", "")).strip().lower()
        credentials = {"username": RESET_REQUESTS_PREFIX + email}
        if AxesProxyHandler.is_locked(request, credentials):
            return lockout_response(request, credentials=credentials)
        response = super().post(request, *args, **kwargs)
        AxesProxyHandler.user_login_failed(sender=type(self), credentials=credentials, request=request)
        # This request was within the limit and has been answered; the next one is refused.
        request.axes_locked_out = False  # type: ignore[attr-defined]
        return response


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    """A person who proved they own the account by email may log in at once, even if locked out."""

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        axes_reset(username=form.user.get_username())
        return response
