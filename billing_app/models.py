"""Operator-side records: API keys for the metering API (Stripe records live in ``billing_app.stripe``)."""

import hashlib
import secrets

from django.db import models


def api_key_hash(raw_key: str) -> str:
    # Keys are 32 random bytes, so a fast hash is as safe as a slow one and keeps auth cheap.
    return hashlib.sha256(raw_key.encode()).hexdigest()


class ApiKey(models.Model):
    """A secret key a backend sends as ``Authorization: Bearer <key>``. Only its hash is stored."""

    name = models.CharField(max_length=120)
    prefix = models.CharField(max_length=16, help_text="The first characters, to recognise a key.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def generate(cls, *, name: str) -> tuple["ApiKey", str]:
        """Create a key and return it with the raw secret, which is shown once and never stored."""
        raw_key = "sk_live_" + secrets.token_urlsafe(32)
        api_key = cls.objects.create(name=name, prefix=raw_key[:12], key_hash=api_key_hash(raw_key))
        return api_key, raw_key
