"""The client's response types against the OpenAPI schema the live server serves: the same fields, the
same required and nullable ones, the same types and enum values, nested objects and lists included."""

import re
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints, is_typeddict

import httpx
import pytest

from billing_client import Client
from billing_client import types as client_types
from customers.models import Customer

# Every response body the client returns, each named after its schema component in its docstring.
RESPONSE_TYPES = [
    client_types.Customer,
    client_types.CreditGrant,
    client_types.WalletTopUp,
    client_types.EventResult,
    client_types.Reservation,
    client_types.ReservationCommit,
    client_types.CheckResult,
    client_types.Estimate,
    client_types.UsageSummary,
    client_types.UsageCorrection,
]
# Statuses the client adds to the API's: an event kept in the local buffer.
CLIENT_ONLY_VALUES = {"buffered"}
# Fields the API sends as null though the schema says a string (the client types what is sent): none since
# the schema says so (test_the_api_sends_null_where_the_schema_says_so).
NULL_THOUGH_THE_SCHEMA_SAYS_STRING: set[str] = set()


@pytest.fixture
def components(base_url: str) -> dict[str, Any]:
    served = httpx.get(f"{base_url}/api/schema", params={"format": "json"})
    assert served.status_code == 200
    return dict(served.json()["components"]["schemas"])


def component_name(typed_dict: type) -> str:
    match = re.match(r"``(\w+)``", typed_dict.__doc__ or "")
    assert match, f"{typed_dict.__name__} names no schema component"
    return match.group(1)


def resolved(node: dict[str, Any], components: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The schema node behind references and ``allOf`` wrappers, and whether it may be null."""
    nullable = bool(node.get("nullable"))
    while True:
        if "$ref" in node:
            node = components[node["$ref"].rsplit("/", 1)[-1]]
        elif "allOf" in node and len(node["allOf"]) == 1:
            node = node["allOf"][0]
        elif (
            "oneOf" in node
            and {"$ref": "#/components/schemas/NullEnum"} in node["oneOf"]
            and len(node["oneOf"]) == 2
        ):
            # A nullable choice: drf-spectacular writes "one of the enum, or null".
            nullable = True
            (node,) = [
                option for option in node["oneOf"] if option != {"$ref": "#/components/schemas/NullEnum"}
            ]
        else:
            return node, nullable or bool(node.get("nullable"))


def check_type(hint: Any, node: dict[str, Any], components: dict[str, Any], where: str) -> None:
    node, nullable = resolved(node, components)
    hint_args = get_args(hint)
    hint_nullable = get_origin(hint) in (typing.Union, types.UnionType) and type(None) in hint_args
    if where not in NULL_THOUGH_THE_SCHEMA_SAYS_STRING:
        assert hint_nullable == nullable, f"{where}: nullable: {nullable} in the schema, {hint_nullable} here"
    if hint_nullable:
        (hint,) = [arg for arg in hint_args if arg is not type(None)]
    if is_typeddict(hint):
        check_object(hint, node, components, where)
    elif get_origin(hint) is Literal:
        assert set(node["enum"]) <= set(get_args(hint)) <= set(node["enum"]) | CLIENT_ONLY_VALUES, where
    elif get_origin(hint) is list:
        assert node["type"] == "array", where
        check_type(get_args(hint)[0], node["items"], components, f"{where}[]")
    elif get_origin(hint) is dict:
        assert node["type"] == "object" and "additionalProperties" in node, where
        if get_args(hint)[1] is not Any:  # free-form values (an event's properties, as sent)
            check_type(get_args(hint)[1], node["additionalProperties"], components, f"{where}{{}}")
    else:
        expected = {str: "string", int: "integer", bool: "boolean"}[hint]
        assert node.get("type") == expected or (expected == "string" and "enum" in node), where


def check_object(typed_dict: Any, node: dict[str, Any], components: dict[str, Any], where: str) -> None:
    hints = get_type_hints(typed_dict)
    properties = node["properties"]
    assert set(hints) == set(properties), f"{where}: fields differ: {set(hints) ^ set(properties)}"
    for name in node.get("required", []):
        assert name in typed_dict.__required_keys__, (
            f"{where}.{name} is always sent but optional in the client"
        )
    for name, hint in hints.items():
        check_type(hint, properties[name], components, f"{where}.{name}")


@pytest.mark.parametrize("typed_dict", RESPONSE_TYPES, ids=lambda typed_dict: typed_dict.__name__)
def test_the_response_type_matches_the_served_schema(typed_dict: Any, components: dict[str, Any]) -> None:
    name = component_name(typed_dict)

    check_object(typed_dict, components[name], components, name)


def test_the_api_sends_null_where_the_schema_says_so(client: Client, tokens_customer: Customer) -> None:
    result = client.events.create(customer="tokens-co", meter="llm_tokens")
    reservation = client.reservations.create(customer="tokens-co", meter="llm_tokens", quantity=10)

    assert result["status"] == "accepted"
    assert "code" in result and "message" in result
    assert result.get("code") is None and result.get("message") is None
    assert "committed_quantity" in reservation and reservation["committed_quantity"] is None
