from csp.decorators import csp_update
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

from billing_app import login_protection, payment_api, webhook_endpoints_api
from billing_app.api_errors import api_route_not_found
from billing_app.api_keys import PublishableKeysView
from usage.admin.margins import margin_report_page
from usage.admin.price_changes import price_publish, price_research

urlpatterns = [
    path("", RedirectView.as_view(url="/settings/usage", permanent=False)),
    # Staff-only, beside the admin: the research behind a price change (linked from a plan version's page).
    path(
        "admin/price-research/<int:version_id>/",
        admin.site.admin_view(price_research),
        name="price-research",
    ),
    path(
        "admin/price-research/<int:version_id>/publish/",
        admin.site.admin_view(price_publish),
        name="price-publish",
    ),
    # Staff-only: revenue against serving cost (linked from the admin index).
    path("admin/margins/", admin.site.admin_view(margin_report_page), name="margin-report"),
    path("admin/", admin.site.urls),
    # Before Django's own: the password-reset views that brute-force protection wraps.
    path("accounts/password_reset/", login_protection.PasswordResetView.as_view(), name="password_reset"),
    path(
        "accounts/reset/<uidb64>/<token>/",
        login_protection.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path("accounts/", include("django.contrib.auth.urls")),
    path(
        "api/v1/customers/<str:external_id>/publishable-keys",
        PublishableKeysView.as_view(),
        name="api-publishable-keys",
    ),
    path(
        "api/v1/customers/<str:external_id>/checkout-sessions",
        payment_api.CheckoutSessionsView.as_view(),
        name="api-checkout-sessions",
    ),
    path(
        "api/v1/customers/<str:external_id>/auto-top-up",
        payment_api.AutoTopUpView.as_view(),
        name="api-auto-top-up",
    ),
    path(
        "api/v1/customers/<str:external_id>/invoices", payment_api.InvoicesView.as_view(), name="api-invoices"
    ),
    path(
        "api/v1/customers/<str:external_id>/upcoming-invoice",
        payment_api.UpcomingInvoiceView.as_view(),
        name="api-upcoming-invoice",
    ),
    path(
        "api/v1/webhook-endpoints",
        webhook_endpoints_api.WebhookEndpointsView.as_view(),
        name="api-webhook-endpoints",
    ),
    path(
        "api/v1/webhook-endpoints/<int:endpoint_id>",
        webhook_endpoints_api.WebhookEndpointView.as_view(),
        name="api-webhook-endpoint",
    ),
    path("api/v1/", include("usage.api.urls")),
    path("api/schema", SpectacularAPIView.as_view(), name="api-schema"),
    # Redoc styles itself with <style> elements it writes at run time (styled-components), reads the schema
    # in a worker it starts from a blob: URL, and shows Redocly's logo from their CDN (decoration, loaded as
    # before; refusing it would log a violation on every visit). The page shows our own schema, nothing a
    # user wrote.
    path(
        "api/docs",
        csp_update(
            {
                "style-src-elem": ["'unsafe-inline'"],
                "worker-src": ["'self'", "blob:"],
                "img-src": ["https://cdn.redoc.ly"],
            }
        )(SpectacularRedocView.as_view(url_name="api-schema")),
        name="api-docs",
    ),
    # [\s\S], not ".": a path segment may hold a newline (%0A), and such a path is an API 404 too, not an
    # HTML page (an inline (?s) flag would break reversing every URL).
    re_path(r"^api/(?P<path>[\s\S]*)$", api_route_not_found),
    path("", include("usage.urls")),
    path("", include("plans.urls")),
    path("", include("billing_app.stripe.urls")),
]
