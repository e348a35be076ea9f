"""Numbers the usage reads share: zero and the ledger's precisions."""

from decimal import Decimal

from core.money import LEDGER_PLACES, QUANTITY_PLACES

ZERO = Decimal(0)

__all__ = ["LEDGER_PLACES", "QUANTITY_PLACES", "ZERO"]
