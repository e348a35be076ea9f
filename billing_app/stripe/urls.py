from django.urls import path

from billing_app.stripe.webhooks import stripe_webhook

urlpatterns = [
    path("stripe/webhook", stripe_webhook, name="stripe-webhook"),
]
