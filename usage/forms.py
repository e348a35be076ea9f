"""The limits form on /settings/usage. Saving goes through ``customers.services.spend_controls_update``."""

from decimal import Decimal

from django import forms

from plans.models import MONEY
from usage.selectors import UsageSummary


class SpendLimitsForm(forms.Form):
    """A customer's own limits for a period's usage charges, in the plan currency.

    An empty amount means no limit: the hard limit is opt-in.
    """

    soft_limit = forms.DecimalField(
        label="Warn me at",
        required=False,
        min_value=Decimal(0),
        max_digits=MONEY["max_digits"],
        decimal_places=2,
        error_messages={"min_value": "Enter zero or more."},
    )
    hard_limit = forms.DecimalField(
        label="Stop billable usage at",
        required=False,
        min_value=Decimal(0),
        max_digits=MONEY["max_digits"],
        decimal_places=2,
        error_messages={"min_value": "Enter zero or more."},
    )
    block_overage = forms.BooleanField(label="Block overage", required=False)

    def __init__(self, *args: object, currency: str = "usd", **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.currency = currency
        for name in ("soft_limit", "hard_limit"):
            widget = self.fields[name].widget
            widget.attrs.update({"inputmode": "decimal", "placeholder": "No limit", "step": "0.01"})

    @classmethod
    def for_summary(cls, summary: UsageSummary) -> "SpendLimitsForm":
        """The form showing the limits in force, amounts to the cent ("250.00", not "250.0000")."""
        spend = summary.spend
        return cls(
            initial={
                "soft_limit": _cents(spend.soft_limit),
                "hard_limit": _cents(spend.hard_limit),
                "block_overage": spend.block_overage,
            },
            currency=summary.currency,
        )

    def clean(self) -> dict[str, object]:
        cleaned = super().clean() or {}
        soft, hard = cleaned.get("soft_limit"), cleaned.get("hard_limit")
        if isinstance(soft, Decimal) and isinstance(hard, Decimal) and hard < soft:
            self.add_error("hard_limit", "The hard limit must be at least the soft limit.")
        return cleaned


def _cents(amount: Decimal | None) -> Decimal | None:
    return amount.quantize(Decimal("0.01")) if amount is not None else None
