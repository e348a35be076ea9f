"""What the usage app tells others without depending on them.

``wallet_drawn`` is sent after a transaction that took money from wallets has committed, with each wallet's
balance as that transaction left it: ``balances={customer_id: Decimal}``. The automatic top-up
(``billing_app.auto_top_up``) listens for it; usage itself knows nothing of Stripe.
"""

from decimal import Decimal

from django.db import transaction
from django.dispatch import Signal

from usage.models import CustomerBalance

wallet_drawn = Signal()


def wallet_drawn_on_commit(balances: list[CustomerBalance]) -> None:
    """Send ``wallet_drawn`` once the current transaction commits (never, if it rolls back)."""
    if not balances:
        return
    after: dict[int, Decimal] = {balance.customer_id: balance.wallet_balance for balance in balances}
    transaction.on_commit(lambda: wallet_drawn.send(sender=CustomerBalance, balances=after))
