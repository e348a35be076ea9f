"""Readers for decoded request params that answer bad input the way Stripe does.

Every reader takes the (sub)dict, the key and the bracketed prefix of that dict, so an error names the
param exactly as the client sent it: ``tiers[1][up_to]``, ``recurring[meter]``.
"""

import re
from decimal import Decimal, InvalidOperation

from .errors import parameter_invalid, parameter_missing, parameter_unknown

# Stripe's metadata limits: 50 keys, keys up to 40 characters, values up to 500.
METADATA_MAX_KEYS = 50
METADATA_MAX_KEY_LENGTH = 40
METADATA_MAX_VALUE_LENGTH = 500

_INTEGER = re.compile(r"-?\d+")


def field_name(prefix: str, key: str | int) -> str:
    return f"{prefix}[{key}]" if prefix else str(key)


def check_params(params: dict, allowed: set[str], prefix: str = "") -> None:
    """Reject keys we do not know, as Stripe does, so a misspelt param fails loudly in tests too."""
    for key in params:
        if key not in allowed and not (key == "expand" and not prefix):
            raise parameter_unknown(field_name(prefix, key))


def present(params: dict, key: str) -> bool:
    return params.get(key) not in (None, "")


def _absent(value: object, name: str, required: bool) -> bool:
    """True when a param was not sent (an empty string counts as not sent); raises if it was required."""
    if value not in (None, ""):
        return False
    if required:
        raise parameter_missing(name)
    return True


def string(
    params: dict,
    key: str,
    prefix: str = "",
    *,
    required: bool = False,
    choices: tuple[str, ...] | None = None,
    max_length: int = 5000,
) -> str | None:
    name = field_name(prefix, key)
    value = params.get(key)
    if _absent(value, name, required):
        return None
    if not isinstance(value, str):
        raise parameter_invalid(name, f"Invalid string: {value!r}")
    if choices and value not in choices:
        raise parameter_invalid(
            name, f"Invalid {name}: must be one of {', '.join(choices)}", code="parameter_invalid_string"
        )
    if len(value) > max_length:
        raise parameter_invalid(name, f"Invalid {name}: must be at most {max_length} characters")
    return value


def integer(
    params: dict, key: str, prefix: str = "", *, required: bool = False, minimum: int | None = None
) -> int | None:
    name = field_name(prefix, key)
    value = params.get(key)
    if _absent(value, name, required):
        return None
    if not isinstance(value, str) or not _INTEGER.fullmatch(value):
        raise parameter_invalid(name, f"Invalid integer: {value}", code="parameter_invalid_integer")
    number = int(value)
    if minimum is not None and number < minimum:
        raise parameter_invalid(
            name,
            f"Invalid {name}: must be greater than or equal to {minimum}",
            code="parameter_invalid_integer",
        )
    return number


def boolean(params: dict, key: str, prefix: str = "") -> bool | None:
    value = params.get(key)
    if value in (None, ""):
        return None
    if value not in ("true", "false"):
        raise parameter_invalid(field_name(prefix, key), f"Invalid boolean: {value}")
    return value == "true"


def decimal(params: dict, key: str, prefix: str = "") -> Decimal | None:
    """A decimal string such as ``unit_amount_decimal``: at most 12 decimal places, as Stripe allows."""
    name = field_name(prefix, key)
    value = params.get(key)
    if _absent(value, name, required=False):
        return None
    try:
        number = Decimal(value)
    except (InvalidOperation, TypeError):
        raise parameter_invalid(name, f"Invalid decimal: {value}") from None
    exponent = number.as_tuple().exponent
    if not number.is_finite() or (isinstance(exponent, int) and exponent < -12):
        raise parameter_invalid(name, f"Invalid decimal: {value} (at most 12 decimal places)")
    return number


def mapping(params: dict, key: str, prefix: str = "", *, required: bool = False) -> dict | None:
    name = field_name(prefix, key)
    value = params.get(key)
    if _absent(value, name, required):
        return None
    if not isinstance(value, dict):
        raise parameter_invalid(name, f"Invalid object: {name} must be a hash")
    return value


def array(params: dict, key: str, prefix: str = "", *, required: bool = False) -> list | None:
    name = field_name(prefix, key)
    value = params.get(key)
    if _absent(value, name, required):
        return None
    if not isinstance(value, list):
        raise parameter_invalid(name, f"Invalid array: {name} must be an array")
    return value


def expand_paths(params: dict) -> list[str]:
    value = params.get("expand") or []
    return [value] if isinstance(value, str) else [path for path in value if isinstance(path, str)]


def metadata_apply(current: dict[str, str], params: dict) -> dict[str, str]:
    """Merge ``metadata`` the Stripe way: an empty value unsets that key, ``metadata=""`` unsets them all."""
    if "metadata" not in params:
        return dict(current)
    update = params["metadata"]
    if update == "":
        return {}
    if not isinstance(update, dict):
        raise parameter_invalid("metadata", "Invalid object: metadata must be a hash")
    merged = dict(current)
    for key, value in update.items():
        if not isinstance(value, str):
            raise parameter_invalid(f"metadata[{key}]", "Invalid metadata value: must be a string")
        if len(key) > METADATA_MAX_KEY_LENGTH:
            raise parameter_invalid(
                f"metadata[{key}]", f"Metadata keys can be at most {METADATA_MAX_KEY_LENGTH} characters long."
            )
        if len(value) > METADATA_MAX_VALUE_LENGTH:
            raise parameter_invalid(
                f"metadata[{key}]",
                f"Metadata values can be at most {METADATA_MAX_VALUE_LENGTH} characters long.",
            )
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    if len(merged) > METADATA_MAX_KEYS:
        raise parameter_invalid("metadata", f"Metadata can have at most {METADATA_MAX_KEYS} keys.")
    return merged


def text_update(params: dict, key: str, current: str | None = None) -> str | None:
    """An optional text field on update: absent keeps ``current``, an empty string clears it (Stripe's rule)."""
    if key not in params:
        return current
    return string(params, key)
