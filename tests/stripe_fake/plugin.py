"""pytest fixtures for the fake Stripe server; enable with ``pytest_plugins = ["tests.stripe_fake.plugin"]``.

One server serves the whole session (each xdist worker starts its own); every test that asks for
``fake_stripe`` gets it reset, so no object, fault or webhook target leaks between tests.
"""

from collections.abc import Iterator
from typing import Any

import pytest

from .server import FakeStripe


@pytest.fixture(scope="session")
def fake_stripe_server() -> Iterator[FakeStripe]:
    fake = FakeStripe().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_stripe(fake_stripe_server: FakeStripe) -> Iterator[FakeStripe]:
    fake_stripe_server.reset()
    yield fake_stripe_server
    # Faults and webhook targets must not outlive the test that set them: the next user may be
    # a test holding only the session fixture.
    fake_stripe_server.reset()


@pytest.fixture
def fake_stripe_client(fake_stripe: FakeStripe) -> Any:
    """A real ``stripe.StripeClient`` on the fake, without network retries."""
    return fake_stripe.client()
