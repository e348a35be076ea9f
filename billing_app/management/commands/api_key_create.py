"""The first name of ``apikey_create``, kept for the scripts that call it."""

from billing_app.management.commands.apikey_create import Command

__all__ = ["Command"]
