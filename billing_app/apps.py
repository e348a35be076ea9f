from django.apps import AppConfig


class BillingAppConfig(AppConfig):
    name = "billing_app"
    verbose_name = "Billing operations"
    default_auto_field = "django.db.models.BigAutoField"
