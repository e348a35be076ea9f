"""Reservations: reserve + commit from 16 concurrent clients on one customer and on 16, and an oversell check.

    .venv/bin/python bench/reserve.py [--clients 16] [--cycles 25] [--workers N] [--threads N] [--profile]

A cycle is ``POST /api/v1/reservations`` (5 units of ``ai_action``, priced 1 credit a unit and paid
from a credit grant) then ``POST /api/v1/reservations/{id}/commit`` of 3 units (the rest is released).
On one customer every request waits for the same customer lock; on 16, each client has its own.

The raw limit is the same two steps in psycopg, each one transaction on the customer's balance row:
reserve = ``UPDATE usage_customerbalance ... RETURNING`` + ``INSERT`` of the hold into
``usage_reservation``; commit = ``UPDATE ... RETURNING`` (give back the unused units) + ``INSERT`` of the
event into a table shaped like the usage ledger. It decides nothing beyond "is the balance enough"; it is
the least a correct reservation costs in PostgreSQL.

The oversell phase gives one customer exactly 200 credits and makes 400 attempts to reserve 1 unit
from 16 clients at once, committing every other hold; it then counts held + committed against the 200.
"""

import argparse
import cProfile
import json
import sys
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python bench/reserve.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psycopg
from psycopg.types.json import Jsonb

from bench.common import (
    CPU_HEADER,
    PG_BENCH_DSN,
    RAW_EVENT_INSERT,
    CpuMeter,
    CpuShare,
    Server,
    api_client,
    api_key_create,
    cpu_cost_line,
    customers_create,
    database_create,
    django_connections_close,
    gunicorn_running,
    machine_describe,
    ms,
    peak_rss_line,
    percentile,
    plan_publish,
    profile_print,
    rate,
    raw_events_table_create,
    server_arguments,
    server_warm_up,
    steps_print,
    steps_timed,
    table_print,
    threads_run,
    verdict,
)

METER = "ai_action"
HOLD, USE = Decimal(5), Decimal(3)
OVERSELL_BALANCE = 200
OVERSELL_ATTEMPTS_PER_CLIENT = 25
PHASE_BUDGET_S = 25.0
PLENTY = Decimal(10_000_000)


@dataclass
class PhaseResult:
    name: str
    wall: float
    cpu: CpuShare
    reserve: list[float] = field(default_factory=list)  # seconds per reserve (raw: per transaction)
    commit: list[float] = field(default_factory=list)
    cycles: int = 0
    outcomes: Counter = field(default_factory=Counter)

    @property
    def per_second(self) -> float:
        return self.cycles / self.wall


def catalog_build(clients: int) -> dict[str, int]:
    """Customers for each phase; returns {external id: pk} with the meter's pk under ``METER``."""
    from plans.models import Meter
    from usage.services import wallet_top_up

    plan_publish(
        "bench-credits", prices=[{"meter": METER, "model": "per_unit", "unit": "credits", "unit_amount": "1"}]
    )
    ids = {}
    api_ids = ["res-shared", "res-warm", *[f"res-{n}" for n in range(clients)]]
    for customer in customers_create("bench-credits", api_ids, credits=PLENTY):
        ids[customer.external_id] = customer.pk
    (limited,) = customers_create("bench-credits", ["res-limited"], credits=Decimal(OVERSELL_BALANCE))
    ids[limited.external_id] = limited.pk
    # The raw phases' customers pay from the wallet, which is what the raw UPDATE takes from.
    for customer in customers_create("bench-credits", ["raw-shared", *[f"raw-{n}" for n in range(clients)]]):
        wallet_top_up(customer=customer, amount=PLENTY)
        ids[customer.external_id] = customer.pk
    ids[METER] = Meter.objects.get(key=METER).pk
    return ids


def api_cycles(name: str, server: Server, api_key: str, customers: list[str], cycles: int) -> PhaseResult:
    """Client ``i`` runs ``cycles`` reserve + commit cycles on ``customers[i]``."""
    reserve_times: list[list[float]] = [[] for _ in customers]
    commit_times: list[list[float]] = [[] for _ in customers]
    done = [0] * len(customers)
    clients = [api_client(server, api_key) for _ in customers]

    def work(index: int) -> None:
        client, deadline = clients[index], time.perf_counter() + PHASE_BUDGET_S
        for number in range(cycles):
            if time.perf_counter() >= deadline:
                break
            started = time.perf_counter()
            held = client.post(
                "/api/v1/reservations",
                json={
                    "customer": customers[index],
                    "meter": METER,
                    "quantity": str(HOLD),
                    "idempotency_key": f"{name}-{index}-{number}",
                },
            )
            reserved = time.perf_counter()
            if held.status_code != 201:
                raise RuntimeError(f"{name}: reserve answered {held.status_code}: {held.text[:300]}")
            committed = client.post(
                f"/api/v1/reservations/{held.json()['id']}/commit", json={"quantity": str(USE)}
            )
            finished = time.perf_counter()
            if committed.status_code != 200 or committed.json()["released"] != str(HOLD - USE):
                raise RuntimeError(f"{name}: commit answered {committed.status_code}: {committed.text[:300]}")
            reserve_times[index].append(reserved - started)
            commit_times[index].append(finished - reserved)
            done[index] += 1

    meter = CpuMeter(server.pid)
    meter.start()
    try:
        wall = threads_run(len(customers), work)
    finally:
        for client in clients:
            client.close()
    cpu = meter.stop()
    return PhaseResult(
        name,
        wall,
        cpu,
        [t for times in reserve_times for t in times],
        [t for times in commit_times for t in times],
        sum(done),
    )


RAW_RESERVE = (
    "UPDATE usage_customerbalance SET wallet_balance = wallet_balance - %(hold)s, updated_at = now() "
    "WHERE customer_id = %(customer)s AND wallet_balance >= %(hold)s RETURNING wallet_balance"
)
RAW_HOLD_INSERT = (
    "INSERT INTO usage_reservation (id, customer_id, meter_id, idempotency_key, properties, quantity, unit, "
    "held_included, held_cost, held_credits, held_wallet, held_overage, status, expires_at, created_at, "
    "commit_idempotency_key) "
    "VALUES (%(id)s, %(customer)s, %(meter)s, %(key)s, '{}', %(hold)s, 'usd', 0, %(hold)s, 0, %(hold)s, 0, 'held', "
    "%(expires)s, %(now)s, '')"
)
RAW_COMMIT = (
    "UPDATE usage_customerbalance SET wallet_balance = wallet_balance + %(released)s, updated_at = now() "
    "WHERE customer_id = %(customer)s RETURNING wallet_balance"
)


def raw_cycles(
    name: str, server_pid: int, customer_pks: list[int], meter_pk: int, cycles: int
) -> PhaseResult:
    """The raw limit: client ``i`` runs ``cycles`` two-transaction cycles on ``customer_pks[i]``."""
    reserve_times: list[list[float]] = [[] for _ in customer_pks]
    commit_times: list[list[float]] = [[] for _ in customer_pks]
    connections = [psycopg.connect(PG_BENCH_DSN) for _ in customer_pks]

    def work(index: int) -> None:
        conn, customer, deadline = (
            connections[index],
            customer_pks[index],
            time.perf_counter() + PHASE_BUDGET_S,
        )
        for number in range(cycles):
            if time.perf_counter() >= deadline:
                break
            now = datetime.now(UTC)
            key = f"{name}-{index}-{number}"
            started = time.perf_counter()
            with conn.transaction():
                if conn.execute(RAW_RESERVE, {"hold": HOLD, "customer": customer}).fetchone() is None:
                    raise RuntimeError(f"{name}: the raw customer ran out of wallet")
                conn.execute(
                    RAW_HOLD_INSERT,
                    {
                        "id": uuid.uuid4(),
                        "customer": customer,
                        "meter": meter_pk,
                        "key": key,
                        "hold": HOLD,
                        "expires": now + timedelta(minutes=5),
                        "now": now,
                    },
                )
            reserved = time.perf_counter()
            with conn.transaction():
                conn.execute(RAW_COMMIT, {"released": HOLD - USE, "customer": customer}).fetchone()
                zero = Decimal(0)
                conn.execute(
                    RAW_EVENT_INSERT,
                    (
                        customer,
                        meter_pk,
                        key,
                        USE,
                        Jsonb({}),
                        now,
                        now,
                        now,
                        "",
                        "",
                        True,
                        "usd",
                        USE,
                        zero,
                        zero,
                        USE,
                        zero,
                    ),
                )
            commit_times[index].append(time.perf_counter() - reserved)
            reserve_times[index].append(reserved - started)

    meter = CpuMeter(server_pid)
    meter.start()
    try:
        wall = threads_run(len(customer_pks), work)
        cpu = meter.stop()  # before closing: a backend that has exited no longer shows its CPU
    finally:
        for conn in connections:
            conn.close()
    reserves = [t for times in reserve_times for t in times]
    return PhaseResult(name, wall, cpu, reserves, [t for times in commit_times for t in times], len(reserves))


def oversell_run(server: Server, api_key: str, clients: int) -> tuple[PhaseResult, dict[str, Decimal]]:
    """Many more attempts than the balance allows, all at once; every other hold is committed."""
    outcomes: list[Counter] = [Counter() for _ in range(clients)]
    http = [api_client(server, api_key) for _ in range(clients)]

    def work(index: int) -> None:
        client, deadline = http[index], time.perf_counter() + PHASE_BUDGET_S
        for number in range(OVERSELL_ATTEMPTS_PER_CLIENT):
            if time.perf_counter() >= deadline:
                break
            response = client.post(
                "/api/v1/reservations",
                json={
                    "customer": "res-limited",
                    "meter": METER,
                    "quantity": "1",
                    "idempotency_key": f"o-{index}-{number}",
                },
            )
            if response.status_code == 201:
                outcomes[index]["held"] += 1
                if number % 2:
                    commit = client.post(
                        f"/api/v1/reservations/{response.json()['id']}/commit", json={"quantity": "1"}
                    )
                    outcomes[index][
                        "committed" if commit.status_code == 200 else f"commit {commit.status_code}"
                    ] += 1
            else:
                code = response.json().get("error", {}).get("code") if response.status_code < 500 else None
                outcomes[index][f"{response.status_code} {code}"] += 1

    meter = CpuMeter(server.pid)
    meter.start()
    try:
        wall = threads_run(clients, work)
    finally:
        for client in http:
            client.close()
    cpu = meter.stop()
    total = sum(outcomes, Counter())
    with psycopg.connect(PG_BENCH_DSN) as conn:
        row = conn.execute(
            """
            SELECT
              coalesce(sum(r.quantity) FILTER (WHERE r.status = 'held' AND r.expires_at > now()), 0),
              coalesce(sum(r.committed_quantity) FILTER (WHERE r.status = 'committed'), 0),
              (SELECT sum(remaining) FROM usage_creditgrant g WHERE g.customer_id = c.id),
              (SELECT coalesce(sum(quantity), 0) FROM usage_usageevent e WHERE e.customer_id = c.id)
            FROM customers_customer c LEFT JOIN usage_reservation r ON r.customer_id = c.id
            WHERE c.external_id = 'res-limited' GROUP BY c.id
            """
        ).fetchone()
    assert row is not None
    counts = dict(zip(("held", "committed", "grant_remaining", "events"), row, strict=True))
    return PhaseResult("oversell", wall, cpu, outcomes=total), counts


def reserve_steps() -> list[tuple[Any, str, str]]:
    import usage.api.views
    import usage.batch_writes
    import usage.recording
    import usage.services

    return [
        (usage.api.views, "reservation_create", "reservation_create"),
        (usage.api.views, "reservation_commit", "reservation_commit"),
        *[
            (usage.services, name, name)
            for name in ("_reservation_locked", "reservation_for_settling", "customer_consumption_for_update")
        ],
        (usage.services, "ConsumptionEngine", "ConsumptionEngine"),
        (usage.recording.UsageRecorder, "record", "UsageRecorder.record"),
        (usage.recording.UsageRecorder, "finish", "UsageRecorder.finish"),
        (usage.services.BatchWrites, "flush", "BatchWrites.flush"),
        *[(usage.batch_writes, name, name) for name in ("events_insert",)],
        (usage.batch_writes, "writes_run", "writes_run (the other rows, one round trip)"),
    ]


RESERVE_STEPS = [
    ("whole request", 0),
    ("reservation_create", 1),
    ("reservation_commit", 1),
    ("_reservation_locked", 2),
    ("reservation_for_settling", 3),
    ("customer_consumption_for_update", 2),
    ("ConsumptionEngine", 2),
    ("UsageRecorder.record", 2),
    ("UsageRecorder.finish", 2),
    ("BatchWrites.flush", 2),
    ("events_insert", 3),
    ("writes_run (the other rows, one round trip)", 3),
    ("SQL round trips", 1),
]


def reserve_profile(api_key: str) -> None:
    """Reserve + commit cycles on one customer through the whole request path in this process: the steps
    (median of 40 cycles, no profiler), then cProfile of 40 more cycles."""
    from django.test import Client

    warnings.filterwarnings("ignore", message="No directory at")  # whitenoise, in-process only
    client = Client(SERVER_NAME="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {api_key}")

    def cycle(key: str, runs: dict[str, list[dict[str, float]]] | None = None) -> None:
        body = {"customer": "res-0", "meter": METER, "quantity": str(HOLD), "idempotency_key": key}
        with steps_timed(reserve_steps()) as steps:
            started = time.perf_counter()
            held = client.post("/api/v1/reservations", data=body, content_type="application/json")
            steps["whole request"] = time.perf_counter() - started
        assert held.status_code == 201, held.content[:300]
        if runs is not None:
            runs["reserve"].append(dict(steps))
        with steps_timed(reserve_steps()) as steps:
            started = time.perf_counter()
            committed = client.post(
                f"/api/v1/reservations/{held.json()['id']}/commit",
                data={"quantity": str(USE)},
                content_type="application/json",
            )
            steps["whole request"] = time.perf_counter() - started
        assert committed.status_code == 200, committed.content[:300]
        if runs is not None:
            runs["commit"].append(dict(steps))

    for number in range(5):
        cycle(f"prof-warm-{number}")
    runs: dict[str, list[dict[str, float]]] = {"reserve": [], "commit": []}
    for number in range(40):
        cycle(f"prof-{number}", runs)
    print("\nprofile: one reserve and one commit in-process, no profiler (indented steps run inside)")
    steps_print(runs, RESERVE_STEPS)
    profiler = cProfile.Profile()
    profiler.enable()
    for number in range(40):
        cycle(f"prof-cprofile-{number}")
    profiler.disable()
    profile_print(profiler, "40 reserve + commit cycles")


def latency(values: list[float]) -> str:
    return f"{ms(percentile(values, 50))} / {ms(percentile(values, 99))}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients in every phase")
    parser.add_argument("--cycles", type=int, default=25, help="reserve + commit cycles per client and phase")
    server_arguments(parser)
    parser.add_argument("--profile", action="store_true", help="also profile reserve + commit in-process")
    args = parser.parse_args()
    started = time.perf_counter()

    database_create()
    ids = catalog_build(args.clients)
    api_key = api_key_create()
    raw_events_table_create()
    django_connections_close()
    machine_describe(args.workers, args.threads)
    print(
        f"workload: {args.clients} clients × up to {args.cycles} cycles (reserve {HOLD}, commit {USE}) per phase; "
        f"phases stop at {PHASE_BUDGET_S:.0f} s"
    )

    own = [f"res-{n}" for n in range(args.clients)]
    shared = ["res-shared"] * args.clients
    with gunicorn_running(workers=args.workers, threads=args.threads) as server:
        raw_one = raw_cycles(
            "raw, 1 customer", server.pid, [ids["raw-shared"]] * args.clients, ids[METER], args.cycles
        )
        raw_many = raw_cycles(
            f"raw, {args.clients} customers",
            server.pid,
            [ids[f"raw-{n}"] for n in range(args.clients)],
            ids[METER],
            args.cycles,
        )
        server_warm_up(server, api_key, warm_up_request())
        api_one = api_cycles("API, 1 customer", server, api_key, shared, args.cycles)
        api_many = api_cycles(f"API, {args.clients} customers", server, api_key, own, args.cycles)
        oversell, counts = oversell_run(server, api_key, args.clients)
        peaks = server.workers_peak_rss_mb()

    print()
    table_print(
        ["phase", "cycles/s", "reserve p50 / p99", "commit p50 / p99", "cycles", "wall", CPU_HEADER],
        [
            (
                r.name,
                f"{r.per_second:,.1f}",
                latency(r.reserve),
                latency(r.commit),
                r.cycles,
                f"{r.wall:.1f} s",
                r.cpu.cells(),
            )
            for r in (raw_one, api_one, raw_many, api_many)
        ],
    )
    print()
    for r in (raw_one, api_one, raw_many, api_many, oversell):
        print(f"  {r.name}: {r.cpu.describe()}")

    granted = int(counts["held"] + counts["committed"])
    oversells = max(granted - OVERSELL_BALANCE, 0)
    attempts = sum(v for k, v in oversell.outcomes.items() if not k.startswith("commit"))
    consistent = (
        oversell.outcomes["held"] == granted
        and counts["grant_remaining"] == OVERSELL_BALANCE - counts["committed"]
        and counts["events"] == counts["committed"]
    )
    print()
    for r_api, r_raw, label in (
        (api_one, raw_one, "1 customer"),
        (api_many, raw_many, f"{args.clients} customers"),
    ):
        print(
            f"reserve+commit, {args.clients} clients on {label}: {r_api.per_second:,.1f} cycles/s via API "
            f"(reserve p50 {ms(percentile(r_api.reserve, 50))}, p99 {ms(percentile(r_api.reserve, 99))}; "
            f"commit p50 {ms(percentile(r_api.commit, 50))}, p99 {ms(percentile(r_api.commit, 99))}) "
            f"vs raw {rate(r_raw.per_second)} cycles/s → {r_api.per_second / r_raw.per_second:.0%}"
        )
        print(
            cpu_cost_line(
                "cycle", (r_api.cpu, r_api.wall, r_api.cycles), (r_raw.cpu, r_raw.wall, r_raw.cycles)
            )
        )
    print(
        f"oversell: {oversells} [target 0: {verdict(oversells == 0 and consistent)}] — {attempts} attempts, "
        f"{oversell.outcomes['held']} granted (answers: {dict(oversell.outcomes)}); in the database "
        f"held {counts['held']:.0f} + committed {counts['committed']:.0f} = {granted} vs balance {OVERSELL_BALANCE}; "
        f"grant remaining {counts['grant_remaining']:.0f}, events {counts['events']:.0f}"
        + ("" if consistent else " — INCONSISTENT")
    )
    print(peak_rss_line(peaks))
    if not any(key.startswith("402") for key in oversell.outcomes):
        print(
            "warning: the oversell phase never ran out of balance (it stopped at its time budget); rerun it"
        )
    if args.profile:
        reserve_profile(api_key)
    print(f"\n(total run time {time.perf_counter() - started:.0f} s)")
    return 0 if oversells == 0 and consistent else 1


def warm_up_request() -> Callable[[httpx.Client], None]:
    def request(client: httpx.Client) -> None:
        held = client.post(
            "/api/v1/reservations",
            content=json.dumps(
                {
                    "customer": "res-warm",
                    "meter": METER,
                    "quantity": "1",
                    "idempotency_key": str(uuid.uuid4()),
                }
            ),
        )
        held.raise_for_status()
        client.post(
            f"/api/v1/reservations/{held.json()['id']}/commit", json={"quantity": "1"}
        ).raise_for_status()

    return request


if __name__ == "__main__":
    sys.exit(main())
