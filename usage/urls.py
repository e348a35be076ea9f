from django.urls import path

from usage import payment_views, plan_views, price_change_views, views

urlpatterns = [
    path("settings/usage", views.settings_usage, name="settings-usage"),
    path("settings/usage/partials/<slug:name>", views.settings_usage_partial, name="settings-usage-partial"),
    path("settings/usage/limits", views.limits_update, name="settings-usage-limits"),
    path("settings/plan", plan_views.settings_plan, name="settings-plan"),
    path("settings/plan/choose", plan_views.settings_plan_choose, name="settings-plan-choose"),
    path(
        "settings/plan/price-change", plan_views.settings_plan_price_change, name="settings-plan-price-change"
    ),
    path(
        "settings/plan/price-change/<str:token>",
        price_change_views.price_change_choice,
        name="price-change-choice",
    ),
    path(
        "settings/usage/notifications/<int:notification_id>/read",
        views.notification_read,
        name="settings-usage-notification-read",
    ),
    path(
        "settings/usage/notifications/read-all",
        views.notifications_read_all,
        name="settings-usage-notifications-read-all",
    ),
    path("settings/usage/checkout", payment_views.checkout_start, name="settings-usage-checkout"),
    path(
        "settings/usage/checkout/return", payment_views.checkout_return, name="settings-usage-checkout-return"
    ),
    path("settings/usage/auto-top-up", payment_views.auto_top_up_save, name="settings-usage-auto-top-up"),
    # plotly.js from the installed plotly package (see views.plotly_js): versioned, cached for a year.
    path("vendor/plotly-<str:version>.min.js", views.plotly_js, name="plotly-js"),
    path("vendor/plotly-<str:version>.css", views.plotly_css, name="plotly-css"),
]
