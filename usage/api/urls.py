from django.urls import path

from usage.api import customer_views, plan_views, price_change_views, report_views, views

urlpatterns = [
    path("customers", customer_views.CustomersView.as_view(), name="api-customers"),
    path("customers/<str:external_id>", customer_views.CustomerView.as_view(), name="api-customer"),
    path("customers/<str:external_id>/subscription", customer_views.SubscriptionView.as_view()),
    path("customers/<str:external_id>/credits", customer_views.CreditsView.as_view()),
    path("customers/<str:external_id>/wallet/top-ups", customer_views.WalletTopUpView.as_view()),
    path("customers/<str:external_id>/limits", customer_views.LimitsView.as_view()),
    path("customers/<str:external_id>/events", customer_views.CustomerEventsView.as_view()),
    path("customers/<str:external_id>/ledger", customer_views.CustomerLedgerView.as_view()),
    path(
        "customers/<str:external_id>/usage",
        customer_views.CustomerUsageView.as_view(),
        name="api-customer-usage",
    ),
    path(
        "customers/<str:external_id>/plan-comparison",
        plan_views.PlanComparisonView.as_view(),
        name="api-customer-plan-comparison",
    ),
    path("meters/<str:key>/usage-percentiles", price_change_views.MeterUsagePercentilesView.as_view()),
    path(
        "plans/<str:code>/versions/<int:number>/migration-preview",
        price_change_views.MigrationPreviewView.as_view(),
    ),
    path("reports/margins", report_views.MarginReportView.as_view(), name="api-reports-margins"),
    path("events", views.EventsView.as_view(), name="api-events"),
    path(
        "events/<str:event_id>/corrections",
        views.EventCorrectionsView.as_view(),
        name="api-event-corrections",
    ),
    path("check", views.CheckView.as_view(), name="api-check"),
    path("estimate", views.EstimateView.as_view(), name="api-estimate"),
    path("reservations", views.ReservationsView.as_view(), name="api-reservations"),
    path("reservations/<uuid:reservation_id>", views.ReservationView.as_view()),
    path("reservations/<uuid:reservation_id>/commit", views.ReservationCommitView.as_view()),
    path("reservations/<uuid:reservation_id>/release", views.ReservationReleaseView.as_view()),
]
