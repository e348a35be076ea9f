"""`make smoke`: a fresh clone's `make run`, used over HTTP as a newcomer would, then stopped.

What it proves, each a way the app once failed on its demo setup while the test suite passed:
- a Free customer sent 21 AI actions from 4 threads at once gets exactly its 20;
- requests of 1, 2 and 3 units add up to 6 in the usage API;
- the demo admin's /settings/usage shows the period totals the usage API gives;
- no response is a 5xx;
- `manage.py ledger_check` passes on the database `make run` built;
- Ctrl-C stops every process it started, embedded servers included.

It clones the committed HEAD (what CI would get), on ports of its own, with neither DATABASE_URL nor
REDIS_URL, and stops within a few minutes by itself whatever happens.
"""

import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from decimal import Decimal
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 240  # seconds: the clone's first `make run` creates its environment and loads the demo
KEY_PATTERN = re.compile(r"Bearer (sk_test_[A-Za-z0-9_-]+)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def step(message: str) -> None:
    print(f"smoke | {message}", flush=True)


class Failure(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failure(message)


class Api:
    """The metering API with the printed demo key; every answer is checked for a 5xx."""

    def __init__(self, base: str, key: str) -> None:
        self.client = httpx.Client(
            base_url=base,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
            transport=httpx.HTTPTransport(),
        )

    def call(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = self.client.request(method, path, **kwargs)
        check(
            response.status_code < 500,
            f"{method} {path} answered {response.status_code}: {response.text[:300]}",
        )
        return response

    def event(self, customer: str, meter: str, quantity: str = "1") -> str:
        body = {
            "idempotency_key": uuid.uuid4().hex,
            "customer": customer,
            "meter": meter,
            "quantity": quantity,
        }
        response = self.call("POST", "/api/v1/events", json=body)
        check(
            response.status_code == 200,
            f"POST /api/v1/events answered {response.status_code}: {response.text}",
        )
        return response.json()["results"][0]["status"]


def meters_by_key(usage: dict) -> dict[str, Decimal]:
    return {line["key"]: Decimal(line["quantity"]) for line in usage["meters"]}


def free_plan_cap_holds_under_concurrency(api: Api) -> None:
    customer = f"smoke-free-{uuid.uuid4().hex[:8]}"
    created = api.call(
        "POST", "/api/v1/customers", json={"external_id": customer, "name": "Smoke", "plan": "free"}
    )
    check(
        created.status_code == 201, f"creating a Free customer answered {created.status_code}: {created.text}"
    )
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(lambda _: api.event(customer, "ai_action"), range(21)))
    accepted = statuses.count("accepted")
    check(accepted == 20, f"a Free customer got {accepted} of 21 AI actions sent at once, not 20: {statuses}")
    usage = api.call("GET", f"/api/v1/customers/{customer}/usage").json()
    check(meters_by_key(usage)["ai_action"] == 20, f"the usage API says {usage['meters']}, not 20 AI actions")
    step("a Free customer got exactly 20 of 21 AI actions sent from 4 threads")


def quantities_add_up(api: Api) -> None:
    customer = f"smoke-payg-{uuid.uuid4().hex[:8]}"
    created = api.call(
        "POST", "/api/v1/customers", json={"external_id": customer, "name": "Smoke", "plan": "payg"}
    )
    check(created.status_code == 201, f"creating a customer answered {created.status_code}: {created.text}")
    for quantity in ("1", "2", "3"):
        status = api.event(customer, "ai_action", quantity)
        check(status == "accepted", f"an event of {quantity} was {status}")
    quantity = meters_by_key(api.call("GET", f"/api/v1/customers/{customer}/usage").json())["ai_action"]
    check(quantity == 6, f"events of 1, 2 and 3 units add up to {quantity} in the usage API, not 6")
    step("events of 1, 2 and 3 units add up to 6 in the usage API")


def page_agrees_with_api(base: str, api: Api) -> None:
    with httpx.Client(base_url=base, timeout=30, follow_redirects=True) as browser:
        login = browser.get("/accounts/login/")
        check(login.status_code == 200, f"the login page answered {login.status_code}")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
        check(token is not None, "the login page has no CSRF token")
        page = browser.post(
            "/accounts/login/",
            data={"username": "demo", "password": "demo", "csrfmiddlewaretoken": token.group(1)},  # type: ignore[union-attr]
            headers={"Referer": f"{base}/accounts/login/"},
        )
        check(
            page.status_code == 200 and "/settings/usage" in str(page.url),
            f"logging in as demo led to {page.url}",
        )
    usage = api.call("GET", "/api/v1/customers/acme/usage").json()
    # Each meter's card shows what the API's display_quantity says, in its display_unit: a meter counted in
    # units carries its full quantity in the title ("69,689 actions"); one shown as money, its cost ("$28.36").
    shown: dict[str, Decimal] = {}
    for key, title, text in re.findall(
        r'data-meter="([^"]+)">.*?class="big-number"(?: title="([^"]+)")?>\s*<span data-testid="meter-quantity">([^<]+)<',
        page.text,
        re.S,
    ):
        figure = html.unescape(title).split(" ")[0] if title else html.unescape(text)
        shown[key] = Decimal(re.sub(r"[^0-9.\-]", "", figure))
    expected = {
        line["key"]: Decimal(line["display_quantity"]).quantize(Decimal("0.01"))
        if line["display_unit"].lower() == usage["currency"]  # shown as money
        else Decimal(line["quantity"])
        for line in usage["meters"]
    }
    check(shown == expected, f"/settings/usage shows {shown}, the usage API {expected}")
    step(f"the demo admin's page shows the usage API's period totals: {shown}")


def ledger_checks(clone: Path, database_url: str) -> None:
    result = subprocess.run(
        [clone / ".venv" / "bin" / "python", "manage.py", "ledger_check"],
        cwd=clone,
        env={**os.environ, "DATABASE_URL": database_url, "DEBUG": "true"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    check(result.returncode == 0, f"ledger_check failed:\n{result.stdout}{result.stderr}")
    step(result.stdout.strip())


def main() -> int:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="billing-smoke-"))
    clone = workdir / "billing"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    web, postgres, redis = free_port(), free_port(), free_port()
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DATABASE_URL", "REDIS_URL", "VIRTUAL_ENV")
    }
    env.update(EMBEDDED_POSTGRES_PORT=str(postgres), EMBEDDED_REDIS_PORT=str(redis), PORT=str(web))
    log_path = workdir / "make-run.log"
    step(f"make run in a fresh clone of HEAD, port {web} (log: {log_path})")
    with log_path.open("w") as log:
        # A session of its own, so that the interrupt reaches make and all it started, as Ctrl-C would.
        run = subprocess.Popen(
            ["make", "run"], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    failed = False
    try:
        deadline = time.monotonic() + START_TIMEOUT
        key = None
        while key is None:
            check(
                run.poll() is None, f"make run exited with {run.returncode}:\n{log_path.read_text()[-3000:]}"
            )
            check(time.monotonic() < deadline, f"make run printed no API key within {START_TIMEOUT} s")
            found = KEY_PATTERN.search(log_path.read_text())
            key = found.group(1) if found else None
            time.sleep(0.5)
        step(f"serving after {time.monotonic() - started:.0f} s, with a printed test-mode key")
        base = f"http://127.0.0.1:{web}"
        api = Api(base, key)
        free_plan_cap_holds_under_concurrency(api)
        quantities_add_up(api)
        page_agrees_with_api(base, api)
        ledger_checks(clone, f"postgres://postgres@127.0.0.1:{postgres}/billing")
    except Failure as failure:
        failed = True
        print(f"smoke | FAILED: {failure}", file=sys.stderr, flush=True)
    finally:
        with suppress(ProcessLookupError):  # make run may have exited on its own
            os.killpg(run.pid, signal.SIGINT)
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            failed = True
            print("smoke | FAILED: make run did not stop within 60 s of Ctrl-C", file=sys.stderr)
    leftovers = subprocess.run(["pgrep", "-f", str(clone)], capture_output=True, text=True).stdout.split()
    busy = [port for port in (web, postgres, redis) if socket.socket().connect_ex(("127.0.0.1", port)) == 0]
    if leftovers or busy:
        failed = True
        print(f"smoke | FAILED: still running after Ctrl-C: pids {leftovers}, ports {busy}", file=sys.stderr)
        for pid in leftovers:
            os.kill(int(pid), signal.SIGKILL)
    else:
        step("Ctrl-C stopped every process and both embedded servers")
    if failed:
        print(log_path.read_text()[-4000:], file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    step(f"{'failed' if failed else 'passed'} in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
