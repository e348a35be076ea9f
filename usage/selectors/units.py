"""Numbers the usage reads share: zero and the ledger's precisions."""

from decimal import Decimal

ZERO = Decimal(0)
QUANTITY_PLACES = Decimal("0.000001")  # the ledger's quantity precision
LEDGER_PLACES = Decimal("0.000000000001")  # the ledger's amount precision
