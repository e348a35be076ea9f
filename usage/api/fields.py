"""Serializer pieces shared by the API's endpoints."""

import json
from decimal import Decimal
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.errors import OutOfRange
from plans.models import MONEY, RATE
from usage.models import PropertiesEncoder
from usage.validation import (
    MAX_PROPERTIES_BYTES,
    OutOfRangeValue,
    decimal_column_max,
    parse_quantity,
    properties_problem,
)


def out_of_range(*, param: str | None, maximum: Decimal) -> OutOfRange:
    # Raised past DRF's collection of field errors on purpose: the answer is the one out_of_range error.
    return OutOfRange(f"{param or 'The value'} must be at most {maximum:f}.", param=param, max=f"{maximum:f}")


@extend_schema_field(OpenApiTypes.DECIMAL)
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


@extend_schema_field(OpenApiTypes.DECIMAL)
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
        return super().validate_precision(value)


class MoneyField(AmountField):
    """An amount of the customer's currency as spend controls store it (``plans.models.MONEY``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(column=MONEY, decimal_places=MONEY["decimal_places"], **kwargs)


class LedgerAmountField(AmountField):
    """Credits or money as grants and the wallet hold them (``plans.models.RATE``), to ``decimal_places``."""

    def __init__(self, *, decimal_places: int, **kwargs: Any) -> None:
        super().__init__(column=RATE, decimal_places=decimal_places, **kwargs)


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
