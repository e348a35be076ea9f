"""API keys for the metering API, and the stored answers that make its writes idempotent."""

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q

from customers.models import Customer


def api_key_hash(raw_key: str) -> str:
    # Keys are 32 random bytes, so a fast hash is as safe as a slow one and keeps auth cheap.
    return hashlib.sha256(raw_key.encode()).hexdigest()


class ApiKeyKind(models.TextChoices):
    SECRET = "secret", "Secret: every endpoint, for a backend"
    PUBLISHABLE = "publishable", "Publishable: one customer's usage and checks, for a frontend"


class ApiKey(models.Model):
    """A key a client sends as ``Authorization: Bearer <key>``. Only its hash is stored.

    A secret key (``sk_``) may call every endpoint. A publishable key (``pk_``) belongs to one customer and
    may only read that customer's usage and ask checks about it (``billing_app.api_auth.ApiKeyScope``), so
    the customer's frontend can hold it.
    """

    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=12, choices=ApiKeyKind.choices, default=ApiKeyKind.SECRET)
    customer = models.ForeignKey(
        Customer,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="publishable_keys",
        help_text="Set for a publishable key: the only customer it may ask about.",
    )
    prefix = models.CharField(max_length=16, help_text="The first characters, to recognise a key.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Requests a minute this key may make. Empty: the default (API_RATE_LIMIT_PER_MINUTE); "
        "0: no limit.",
    )

    class Meta:
        verbose_name = "API key"
        constraints = [
            models.CheckConstraint(
                condition=Q(kind=ApiKeyKind.SECRET, customer__isnull=True)
                | Q(kind=ApiKeyKind.PUBLISHABLE, customer__isnull=False),
                name="api_key_customer_iff_publishable",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def generate(
        cls,
        *,
        name: str,
        rate_limit_per_minute: int | None = None,
        test_mode: bool | None = None,
        customer: Customer | None = None,
    ) -> tuple["ApiKey", str]:
        """Create a key and return it with the raw secret, which is shown once and never stored.

        A test-mode key (``sk_test_``, the demo's) says so in its prefix, so it is never mistaken for one
        that a production backend uses. Unless told, the mode follows ``DEBUG``: a key made on a
        development server is a test key, one made in production a live key. With a ``customer`` the key is
        that customer's publishable key (``pk_test_``, ``pk_live_``).
        """
        if test_mode is None:
            test_mode = settings.DEBUG
        kind = ApiKeyKind.SECRET if customer is None else ApiKeyKind.PUBLISHABLE
        start = "sk" if kind == ApiKeyKind.SECRET else "pk"
        raw_key = f"{start}_{'test' if test_mode else 'live'}_" + secrets.token_urlsafe(32)
        api_key = cls.objects.create(
            name=name,
            kind=kind,
            customer=customer,
            prefix=raw_key[:12],
            key_hash=api_key_hash(raw_key),
            rate_limit_per_minute=rate_limit_per_minute,
        )
        return api_key, raw_key

    @classmethod
    def generate_publishable(
        cls, *, customer: Customer, name: str | None = None, rate_limit_per_minute: int | None = None
    ) -> tuple["ApiKey", str]:
        """The customer's publishable key, named after the customer unless told."""
        return cls.generate(
            name=name or f"Publishable key of {customer.external_id}",
            customer=customer,
            rate_limit_per_minute=rate_limit_per_minute,
        )


class IdempotencyKey(models.Model):
    """An ``Idempotency-Key`` an API key sent with a write, and the answer that write got.

    Written in the write's own transaction, so a crash keeps neither; a retry with the same key and the
    same request (``fingerprint``) gets ``status_code`` and ``response_body`` back instead of running
    again. Kept ``IDEMPOTENCY_KEY_RETENTION_DAYS`` (``billing_app.idempotency``).
    """

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="idempotency_keys")
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(
        max_length=64, help_text="SHA-256 of the API key, method, path and canonical body of the request."
    )
    method = models.CharField(max_length=10)
    path = models.TextField()
    status_code = models.PositiveSmallIntegerField()
    response_body = models.TextField(blank=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["api_key", "key"], name="idempotency_key_unique_per_api_key"),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.method} {self.path} → {self.status_code})"
