"""Decode Stripe's v1 request encoding: form fields with bracketed keys.

The SDK flattens nested params into ``metadata[plan]=pro``, ``items[0][price]=price_1`` and, from curl,
``expand[]=tiers``. We rebuild the nested dicts and lists so handlers read ``params["items"][0]["price"]``.
Every leaf stays a string, as on the wire: handlers convert ("1000", "inf", "true") where they know the type.
"""

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

# Stripe knows its schema, so it never mistakes ``metadata[0]=x`` for a list; these free-form maps must stay
# dicts even when their keys happen to be digits.
_FREE_FORM_KEYS = frozenset({"metadata", "payload"})

_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_BRACKET = re.compile(r"\[([^\[\]]*)\]")


class FormError(ValueError):
    """A field name that cannot be placed, e.g. ``a=1`` and ``a[b]=2`` in the same request."""


def form_decode(body: str) -> dict:
    """Decode an ``application/x-www-form-urlencoded`` body or query string into nested params."""
    return fields_decode(parse_qsl(body, keep_blank_values=True))


def fields_decode(fields: Iterable[tuple[str, str]]) -> dict:
    """Nest ``(name, value)`` pairs by their bracketed names."""
    root: dict = {}
    for key, value in fields:
        parts = _key_parts(key)
        node = root
        for part in parts[:-1]:
            part = part or str(len(node))  # "[]" appends
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise FormError(f"Invalid form field {key!r}: {part!r} is both a value and a hash.")
        leaf = parts[-1] or str(len(node))
        if isinstance(node.get(leaf), dict):
            raise FormError(f"Invalid form field {key!r}: {leaf!r} is both a value and a hash.")
        node[leaf] = value
    # The top level names the params themselves, never list positions.
    return _listify(root, free_form=True)


def _key_parts(key: str) -> list[str]:
    match = _KEY.fullmatch(key)
    if match is None:
        return [key]
    return [match.group(1), *_BRACKET.findall(match.group(2))]


def _listify(node: dict, *, free_form: bool = False) -> Any:
    """Turn ``{"0": a, "1": b}`` into ``[a, b]`` below every key that is not a free-form map."""
    converted = {
        key: _listify(value, free_form=key in _FREE_FORM_KEYS) if isinstance(value, dict) else value
        for key, value in node.items()
    }
    if not free_form and converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted
