"""Operator-side records: API keys for the metering API, and what the Stripe integration, money in, the
alerting jobs and the webhooks to the operator's backend remember. One module per concern; every model is
imported here, where Django and the rest of the app find it."""

from billing_app.models.api import (
    ApiKey,
    ApiKeyKind,
    IdempotencyKey,
    api_key_hash,
)
from billing_app.models.money_in import (
    AutoTopUp,
    AutoTopUpCharge,
    AutoTopUpChargeStatus,
    CheckoutKind,
    CheckoutSession,
    CheckoutStatus,
    SavedPaymentMethod,
)
from billing_app.models.operations import (
    DivergenceKind,
    OperatorAlert,
    OperatorAlertKind,
    ReconciliationDivergence,
)
from billing_app.models.stripe import (
    MeterEventStatus,
    StripeDimensionMeter,
    StripeInvoice,
    StripeInvoiceLine,
    StripeInvoiceStatus,
    StripeMeterEvent,
    StripeSubscriptionSync,
    StripeUsageCarry,
    StripeWebhookEvent,
)
from billing_app.models.webhooks import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
    WebhookEvent,
    webhook_secret_generate,
)

__all__ = [
    "ApiKey",
    "ApiKeyKind",
    "AutoTopUp",
    "AutoTopUpCharge",
    "AutoTopUpChargeStatus",
    "CheckoutKind",
    "CheckoutSession",
    "CheckoutStatus",
    "DivergenceKind",
    "IdempotencyKey",
    "MeterEventStatus",
    "OperatorAlert",
    "OperatorAlertKind",
    "ReconciliationDivergence",
    "SavedPaymentMethod",
    "StripeDimensionMeter",
    "StripeInvoice",
    "StripeInvoiceLine",
    "StripeInvoiceStatus",
    "StripeMeterEvent",
    "StripeSubscriptionSync",
    "StripeUsageCarry",
    "StripeWebhookEvent",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookDeliveryStatus",
    "WebhookEndpoint",
    "WebhookEvent",
    "api_key_hash",
    "webhook_secret_generate",
]
