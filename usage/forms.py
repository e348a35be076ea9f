"""The limits form on /settings/usage. Saving goes through ``customers.services.spend_controls_update``."""

from collections.abc import Sequence
from decimal import Decimal

from django import forms

from core.money import QUANTITY_PLACES
from plans.models import MONEY, QUANTITY
from usage.selectors import UsageSummary
from usage.selectors.meter_lines import MeterLine


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

    def __init__(
        self,
        *args: object,
        currency: str = "usd",
        meters: Sequence[MeterLine] = (),
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.currency = currency
        for name in ("soft_limit", "hard_limit"):
            widget = self.fields[name].widget
            widget.attrs.update({"inputmode": "decimal", "placeholder": "No limit", "step": "0.01"})
        # One stop in units per meter of the plan; empty removes it.
        self.meters = list(meters)
        for meter in self.meters:
            self.fields[meter_limit_field(meter.key)] = forms.DecimalField(
                label=f"Stop {meter.name} at",
                required=False,
                min_value=QUANTITY_PLACES,
                max_digits=QUANTITY["max_digits"],
                decimal_places=QUANTITY["decimal_places"],
                error_messages={"min_value": "Enter a quantity above zero, or leave it empty for no limit."},
            )

    def meter_limit_fields(self) -> list[tuple[MeterLine, forms.BoundField]]:
        """Each meter of the plan with its limit's field, for the template."""
        return [(meter, self[meter_limit_field(meter.key)]) for meter in self.meters]

    def meter_limits(self) -> dict[str, Decimal | None]:
        """The stops entered, by meter key; None removes one. Call after ``is_valid``."""
        return {meter.key: self.cleaned_data.get(meter_limit_field(meter.key)) for meter in self.meters}

    @classmethod
    def for_summary(cls, summary: UsageSummary) -> "SpendLimitsForm":
        """The form showing the limits in force, amounts to the cent ("250.00", not "250.0000")."""
        spend = summary.spend
        return cls(
            initial={
                "soft_limit": _cents(spend.soft_limit),
                "hard_limit": _cents(spend.hard_limit),
                "block_overage": spend.block_overage,
                **{meter_limit_field(key): Decimal(value) for key, value in spend.meter_limits.items()},
            },
            currency=summary.currency,
            meters=summary.meters,
        )

    def clean(self) -> dict[str, object]:
        cleaned = super().clean() or {}
        soft, hard = cleaned.get("soft_limit"), cleaned.get("hard_limit")
        if isinstance(soft, Decimal) and isinstance(hard, Decimal) and hard < soft:
            self.add_error("hard_limit", "The hard limit must be at least the soft limit.")
        return cleaned


def meter_limit_field(meter_key: str) -> str:
    return f"meter_limit_{meter_key}"


def _cents(amount: Decimal | None) -> Decimal | None:
    return amount.quantize(Decimal("0.01")) if amount is not None else None
