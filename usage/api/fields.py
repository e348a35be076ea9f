"""Serializer pieces shared by the API's endpoints."""

import json
from decimal import Decimal
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from usage.models import PropertiesEncoder
from usage.validation import MAX_PROPERTIES_BYTES, parse_quantity


@extend_schema_field(OpenApiTypes.DECIMAL)
class QuantityField(serializers.Field):
    """A non-negative decimal given as a JSON number or a string; returned as a string."""

    default_error_messages = {"invalid": "{reason}"}

    def to_internal_value(self, data: Any) -> Decimal:
        try:
            return parse_quantity(data)
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


class MoneyField(serializers.DecimalField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_digits", 18)
        kwargs.setdefault("decimal_places", 4)
        kwargs.setdefault("min_value", Decimal(0))
        super().__init__(**kwargs)


class PropertiesField(serializers.DictField):
    """An object of event properties, storable as it is events' (``usage.validation``)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("default", dict)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        properties: dict[str, Any] = super().to_internal_value(data)
        try:
            stored = json.dumps(properties, cls=PropertiesEncoder)
        except ValueError as error:
            raise serializers.ValidationError(str(error)) from error
        if len(stored) > MAX_PROPERTIES_BYTES:
            raise serializers.ValidationError(f"properties are larger than {MAX_PROPERTIES_BYTES} bytes")
        return properties
