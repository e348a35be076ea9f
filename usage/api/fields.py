"""Serializer pieces shared by the API's endpoints."""

import json
from decimal import Decimal
from typing import Any

from django.utils.dateparse import parse_datetime
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.fields import get_attribute

from core.errors import InvalidInput, OutOfRange
from core.money import CREDITS, ISO_4217_CURRENCIES, round_money
from plans.models import MONEY, RATE
from usage.models import PropertiesEncoder
from usage.validation import (
    MAX_PROPERTIES_BYTES,
    MAX_QUANTITY,
    QUANTITY_PLACES,
    OutOfRangeValue,
    decimal_column_max,
    parse_quantity,
    properties_problem,
)


def out_of_range(*, param: str | None, maximum: Decimal) -> OutOfRange:
    # Raised past DRF's collection of field errors on purpose: the answer is the one out_of_range error.
    return OutOfRange(f"{param or 'The value'} must be at most {maximum:f}.", param=param, max=f"{maximum:f}")


def decimal_input_schema(*, maximum: Decimal, places: int) -> dict[str, Any]:
    """The schema of a decimal the API accepts: a JSON number or a plain decimal string, from 0 to
    ``maximum``, with at most ``places`` decimal places. Past ``maximum`` the answer is ``out_of_range``."""
    return {
        "oneOf": [
            {"type": "number", "minimum": 0, "maximum": int(maximum)},
            {"type": "string", "pattern": rf"^[0-9]{{1,{maximum.adjusted() + 1}}}(\.[0-9]{{1,{places}}})?$"},
        ],
        "description": f"A decimal from 0 to {maximum:f}, as a number or a string, at most {places} places.",
    }


class QuantityField(serializers.Field):
    """A non-negative decimal given as a JSON number or a string; returned as a string."""

    default_error_messages = {"invalid": "{reason}"}

    def to_internal_value(self, data: Any) -> Decimal:
        try:
            return parse_quantity(data)
        except OutOfRangeValue as error:
            raise out_of_range(param=self.field_name, maximum=error.maximum) from None
        except ValueError as error:
            self.fail("invalid", reason=str(error))
            raise  # unreachable: fail() raises

    def to_representation(self, value: Decimal) -> str | None:
        return decimal_string(value)


def decimal_string(value: Decimal | None) -> str | None:
    """Decimals go out as plain strings without exponent or trailing zeros: "1500", "0.005"."""
    if value is None:
        return None
    normalized = value.normalize()
    return f"{normalized:f}"


def amount_string(amount: Decimal, unit: str) -> str:
    """An amount charged or held as a balance, in ``unit``: money with exactly its currency's minor-unit
    places ("35.00", JPY "350", KWD "1.250"), rounded half up; credits, which have no minor unit, as
    ``decimal_string``. What is stored keeps its 12 places; only the answer is rounded."""
    if unit == CREDITS:
        return decimal_string(amount) or "0"
    return f"{round_money(amount, unit):f}"


# Output fields. Their schema is a string: decimals never go out as JSON numbers (floats).
_DECIMAL_OUT = {"type": "string", "format": "decimal", "pattern": r"^-?\d+(\.\d+)?$"}


@extend_schema_field({**_DECIMAL_OUT, "example": "0.005"})
class DecimalString(serializers.Field):
    """A decimal at full precision, as ``decimal_string``: quantities, unit rates, per-event amounts."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("read_only", True)
        super().__init__(**kwargs)

    def to_representation(self, value: Decimal) -> str | None:
        return decimal_string(value)


@extend_schema_field({**_DECIMAL_OUT, "example": "35.00"})
class AmountString(serializers.Field):
    """An amount charged or shown as a balance, as ``amount_string``, in the unit ``unit_source`` names
    on the same object (``"currency"``, ``"cost_unit"``, ...)."""

    def __init__(self, *, unit_source: str = "currency", **kwargs: Any) -> None:
        kwargs.setdefault("read_only", True)
        self.unit_source = unit_source
        super().__init__(**kwargs)

    def get_attribute(self, instance: Any) -> tuple[Decimal | None, str]:
        unit = get_attribute(instance, self.unit_source.split("."))
        return super().get_attribute(instance), unit

    def to_representation(self, value: tuple[Decimal | None, str]) -> str | None:
        amount, unit = value
        return None if amount is None else amount_string(amount, unit)


@extend_schema_field({"type": "string", "format": "date-time"})
class Timestamp(serializers.Field):
    """An aware datetime in ISO 8601 as Python writes it (``+00:00``, not ``Z``), as the API always has."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("read_only", True)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> str:
        return str(value.isoformat())


class AmountField(serializers.DecimalField):
    """A non-negative decimal of at most ``decimal_places`` places, bounded by the column it lands in.

    Past the bound the answer is ``out_of_range`` with the bound, never a database overflow.
    """

    def __init__(self, *, column: dict[str, Any], decimal_places: int, **kwargs: Any) -> None:
        self.maximum = decimal_column_max(
            max_digits=column["max_digits"] - column["decimal_places"] + decimal_places,
            decimal_places=decimal_places,
        )
        kwargs.setdefault("min_value", Decimal(0))
        super().__init__(max_digits=None, decimal_places=decimal_places, **kwargs)

    def validate_precision(self, value: Decimal) -> Decimal:
        if value > self.maximum:
            raise out_of_range(param=self.field_name, maximum=self.maximum)
        # Here, before DRF quantizes the value: -2e306 cannot be quantized to a few places (InvalidOperation,
        # a 500), and the min_value validator runs only after that.
        if value < 0:
            self.fail("min_value", min_value=0)
        return super().validate_precision(value)


class MoneyField(AmountField):
    """An amount of the customer's currency as spend controls store it (``plans.models.MONEY``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(column=MONEY, decimal_places=MONEY["decimal_places"], **kwargs)


class LedgerAmountField(AmountField):
    """Credits or money as grants and the wallet hold them (``plans.models.RATE``), to ``decimal_places``."""

    def __init__(self, *, decimal_places: int, **kwargs: Any) -> None:
        super().__init__(column=RATE, decimal_places=decimal_places, **kwargs)


class QuantityFieldSchema(OpenApiSerializerFieldExtension):
    target_class = QuantityField

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        return decimal_input_schema(maximum=MAX_QUANTITY, places=QUANTITY_PLACES)


class AmountFieldSchema(OpenApiSerializerFieldExtension):
    target_class = AmountField
    match_subclasses = True

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        field: AmountField = self.target
        return decimal_input_schema(maximum=field.maximum, places=field.decimal_places or 0)


class AwareDateTimeField(serializers.DateTimeField):
    """An ISO 8601 moment with its offset (``Z``, ``+02:00``). Without one, the moment would depend on the
    server's time zone, so it is refused, as an event's timestamp is."""

    default_error_messages = {"naive": "Give the moment with its offset, e.g. 2025-03-01T00:00:00Z."}

    def to_internal_value(self, value: Any) -> Any:
        moment = super().to_internal_value(value)  # a bad value fails here, naming the field
        if isinstance(value, str) and _parsed_naive(value):
            self.fail("naive")
        return moment


def _parsed_naive(text: str) -> bool:
    try:
        moment = parse_datetime(text.strip())
    except ValueError:
        return False
    return moment is not None and moment.tzinfo is None


class StringField(serializers.CharField):
    """A JSON string, and only a string: DRF's ``CharField`` turns a number into text, so ``"external_id": 42``
    would be taken as ``"42"`` although the schema says string. A client sending the wrong type is told so."""

    default_error_messages = {"not_a_string": "Must be a string."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


# What a currency field accepts: a supported code in lower or upper case, the same list the schema's enum
# names, so a client validating against the schema and the server agree on every value.
CURRENCY_CODES = (*sorted(ISO_4217_CURRENCIES), *sorted(code.upper() for code in ISO_4217_CURRENCIES))


class CurrencyField(StringField):
    """An ISO 4217 code the app supports, as ``usd`` or ``USD``; the value is the lower-case code."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(min_length=3, max_length=3, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        code = super().to_internal_value(data)
        if code not in CURRENCY_CODES:
            # Raised past DRF's collection of field errors, as customer_create does: the answer names the field.
            raise InvalidInput(
                f"{code!r} is not an ISO 4217 currency code in lower or upper case (usd, EUR).",
                param=self.field_name,
            )
        return code.lower()


class CurrencyFieldSchema(OpenApiSerializerFieldExtension):
    target_class = CurrencyField

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        return {"type": "string", "enum": list(CURRENCY_CODES), "description": "An ISO 4217 currency code."}


class PropertiesField(serializers.DictField):
    """An object of event properties, storable as it is events' (``usage.validation``)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("default", dict)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        properties: dict[str, Any] = super().to_internal_value(data)
        if problem := properties_problem(properties):
            raise serializers.ValidationError(problem)
        try:
            stored = json.dumps(properties, cls=PropertiesEncoder)
        except ValueError as error:
            raise serializers.ValidationError(str(error)) from error
        if len(stored) > MAX_PROPERTIES_BYTES:
            raise serializers.ValidationError(f"properties are larger than {MAX_PROPERTIES_BYTES} bytes")
        return properties
