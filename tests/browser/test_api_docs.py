"""/api/docs in a real browser: Redoc from our own static files lists the API's operations."""

import pytest
from playwright.sync_api import Page, Request, expect

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# What the page needs to work; Redoc's footer logo (an image on Redocly's CDN) is decoration.
NEEDED = {"document", "script", "stylesheet", "font", "fetch", "xhr"}


def test_the_api_docs_list_the_operations_from_our_own_files(page: Page, live_server):
    outside: list[str] = []

    def note(request: Request) -> None:
        local = request.url.startswith((live_server.url, f"blob:{live_server.url}"))
        if not local and request.resource_type in NEEDED:
            outside.append(request.url)

    page.on("request", note)
    page.goto(f"{live_server.url}/api/docs")

    expect(page.get_by_text("Billing metering API").first).to_be_visible(timeout=20_000)
    expect(page.get_by_text("/api/v1/events").first).to_be_attached()
    expect(page.get_by_text("/api/v1/reservations").first).to_be_attached()
    assert outside == [], outside
