from django.apps import AppConfig


class BillingAppConfig(AppConfig):
    name = "billing_app"
    verbose_name = "Billing operations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from billing_app.auto_top_up import auto_top_up_on_wallet_drawn
        from billing_app.webhooks_out import webhook_event_on_customer_event
        from customers.events import customer_event_announced
        from usage.signals import wallet_drawn

        # A wallet left below its automatic top-up threshold queues the top-up (usage knows nothing of Stripe).
        wallet_drawn.connect(auto_top_up_on_wallet_drawn, dispatch_uid="auto-top-up")
        # What happens to a customer reaches the operator's webhook endpoints, recorded in the same transaction.
        customer_event_announced.connect(webhook_event_on_customer_event, dispatch_uid="webhooks-out")
