"""The usage app in the Django admin. Django finds the registrations by importing this package, so it imports
each module that registers pages: the ledger's tables (``ledger``) and price changes (``price_changes``).

``common`` holds what both share; ``margins`` is a staff page beside the admin, routed in billing_app/urls.py
with the price research pages of ``price_changes``.
"""

from usage.admin import ledger, price_changes

__all__ = ["ledger", "price_changes"]
