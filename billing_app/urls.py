from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

urlpatterns = [
    path("", RedirectView.as_view(url="/settings/usage", permanent=False)),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/", include("usage.api.urls")),
    path("api/schema", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs", SpectacularRedocView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include("usage.urls")),
    path("", include("plans.urls")),
    path("", include("billing_app.stripe.urls")),
]
