"""Fingerprints of what a client sent, to tell a retry of a request from a different request under one key.

Two payloads have the same fingerprint when they say the same thing: object keys in any order, any
spacing, and a number the same however it is written (``1``, ``1.0``, ``1e0``). Anything else that differs
makes a different fingerprint.
"""

import hashlib
import json
from decimal import Decimal
from typing import Any


def canonical_json(value: Any) -> str:
    """One text for every way of writing the same JSON value: sorted keys, no spaces, numbers by value.

    Raises RecursionError for a value nested deeper than Python recurses.
    """
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float | Decimal):
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
        if not number.is_finite():
            return str(number)
        return "0" if number.is_zero() else format(number.normalize(), "f")
    return str(value)


def fingerprint(value: Any) -> str:
    """The SHA-256 (hex) of ``value``'s canonical JSON."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()
