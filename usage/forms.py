"""The limits form on /settings/usage (saved by ``customers.services.spend_controls_update``), and the admin's
forms for corrections, grants and top-ups (saved by the services the API calls)."""

from collections.abc import Sequence
from decimal import Decimal

from django import forms

from core.money import QUANTITY_PLACES
from plans.models import MONEY, QUANTITY, RATE
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
    default_soft_limit_off = forms.BooleanField(label="Turn off the default warning", required=False)
    # Sent with the form only when it shows the switch: a form without it keeps the customer's choice.
    default_soft_limit_offered = forms.BooleanField(required=False, widget=forms.HiddenInput)

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

    def default_soft_limit_off_choice(self) -> bool | None:
        """The default-warning switch as entered, or None (keep it) when the form did not show it."""
        if not self.cleaned_data.get("default_soft_limit_offered"):
            return None
        return bool(self.cleaned_data.get("default_soft_limit_off"))

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
                "default_soft_limit_off": spend.default_soft_limit_off,
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


class EventCorrectionForm(forms.Form):
    """Staff's correction of one usage event (``usage.corrections.usage_event_correct``).

    ``idempotency_key`` is made when the form is first shown: the preview and the confirmation of one form
    are one correction, and a second click records nothing more.
    """

    quantity = forms.DecimalField(
        label="Corrected quantity",
        min_value=Decimal(0),
        max_digits=QUANTITY["max_digits"],
        decimal_places=QUANTITY["decimal_places"],
        help_text="What the event should have counted in all, not the difference.",
    )
    reason = forms.CharField(max_length=500, widget=forms.Textarea(attrs={"rows": 3}))
    idempotency_key = forms.CharField(max_length=200, widget=forms.HiddenInput)


class CreditGrantForm(forms.Form):
    """Staff's credit grant (``usage.services.credit_grant_create``)."""

    amount = forms.DecimalField(
        min_value=Decimal("0.000001"), max_digits=RATE["max_digits"], decimal_places=6
    )
    unit = forms.CharField(
        max_length=10, required=False, help_text="credits or the currency; empty: the plan's."
    )
    expires_at = forms.DateTimeField(required=False, help_text="Empty: never expires.")
    description = forms.CharField(max_length=200)
    idempotency_key = forms.CharField(max_length=200, widget=forms.HiddenInput)


class WalletTopUpForm(forms.Form):
    """Staff's top-up of a customer's wallet (``usage.services.wallet_top_up``)."""

    amount = forms.DecimalField(min_value=Decimal("0.01"), max_digits=MONEY["max_digits"], decimal_places=2)
    note = forms.CharField(max_length=200)
    idempotency_key = forms.CharField(max_length=200, widget=forms.HiddenInput)
