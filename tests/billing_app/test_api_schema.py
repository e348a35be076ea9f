"""The API keeps the contract its served OpenAPI schema states, for any input: Schemathesis.

A live server (pytest-django's, on 127.0.0.1, over the test database) serves ``/api/schema``; Schemathesis
generates requests for every operation from it, valid and invalid, sends them with a secret key and checks
each answer: no server error, a status the operation documents, a body of its documented schema, the
documented content type and headers. Examples are bounded so the run stays within a couple of minutes on
a 2-core machine; a customer ``acme`` on the pro plan exists so that some generated requests reach past
the 404.
"""

import json
import uuid
from typing import Any

import httpx
import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from rest_framework.utils.encoders import JSONEncoder
from schemathesis import checks

from billing_app.models import ApiKey

pytestmark = pytest.mark.django_db(transaction=True)

# Per operation (16 of them); with both positive and negative data this keeps the run near a minute.
EXAMPLES_PER_OPERATION = 25


def api_schema() -> dict[str, Any]:
    """The schema ``/api/schema`` serves, as its generator makes it (JSON types only)."""
    return json.loads(json.dumps(SchemaGenerator().get_schema(request=None, public=True), cls=JSONEncoder))


# Loaded at collection, before any server runs, to make one test per operation; the test below checks
# that the live server serves this very schema.
schema = schemathesis.openapi.from_dict(api_schema())


@pytest.fixture
def server(live_server: Any, pro_plan: Any, make_customer: Any) -> str:
    make_customer("pro", external_id="acme")
    return str(live_server.url)


@pytest.fixture
def secret_key(server: str) -> str:
    _, raw_key = ApiKey.generate(name="schemathesis")
    return raw_key


def test_the_schema_tested_is_the_one_served(server: str) -> None:
    served = httpx.get(f"{server}/api/schema", params={"format": "json"})
    assert served.status_code == 200
    assert served.json() == api_schema()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_keeps_its_schema(case: Any, server: str, secret_key: str) -> None:
    if case.headers and "Idempotency-Key" in case.headers:
        # A client's key names one request; generated keys repeat across different requests, which would
        # be answered 409 idempotency_key_reused (tested in test_idempotency.py). A body's own key must
        # equal the header's.
        body_key = case.body.get("idempotency_key") if isinstance(case.body, dict) else None
        sendable = isinstance(body_key, str) and body_key.isascii() and body_key.isprintable()
        case.headers["Idempotency-Key"] = body_key if sendable else str(uuid.uuid4())
    case.call_and_validate(
        base_url=server,
        headers={"Authorization": f"Bearer {secret_key}"},
        # Left out: "a schema-valid request is accepted". Some rules cannot be written in the schema (an
        # event at most 35 days old, a currency that exists, a plan that exists), and a generated JSON
        # number is a float whose digits can pass an amount's decimal places.
        excluded_checks=[checks.positive_data_acceptance],
    )
