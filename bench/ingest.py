"""Ingest throughput: ``POST /api/v1/events`` in batches of 1,000 beside raw psycopg inserts of the same rows.

    .venv/bin/python bench/ingest.py [--clients 2] [--batches 20] [--workers 4] [--threads N] [--profile]

Each client thread owns its customers (no two clients wait on the same customer lock) and sends
pre-serialized batches of 1,000 events spread over them: 70% ``api_call`` (per unit, 5,000 included,
then overage, so most events also write a Stripe outbox row) and 30% ``llm_tokens`` (priced by
``model``), from 20 users and 5 actions per customer. The raw baseline is psycopg ``executemany`` of the
same rows into a table shaped like the usage ledger, ``ON CONFLICT DO NOTHING``, one transaction per batch,
from as many connections as there are clients. Then both replay everything: the API answers
``duplicate`` for each event, and the raw inserts conflict on the unique index.
"""

import argparse
import cProfile
import itertools
import json
import random
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python bench/ingest.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psycopg
from psycopg.types.json import Jsonb

from bench.common import (
    CORES,
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

BATCH = 1000
CUSTOMERS_PER_CLIENT = 10
USERS_PER_CUSTOMER = 20
ACTIONS = ("summarize", "classify", "extract", "translate", "chat")
MODELS = ("gpt-4o", "gpt-4o-mini")
# Time budgets: a client stops starting batches when its phase's budget is up, so a slow server
# shortens the run instead of stretching it. The raw phases finish well within theirs.
RAW_BUDGET_S = 30.0
API_BUDGET_S = 35.0
TARGET_RATIO = 0.40
TARGET_P99_S = 0.400


@dataclass
class Batch:
    body: bytes  # the request, serialized before timing so the client does not pay for it
    rows: list[tuple[Any, ...]]  # the same events as raw ledger rows


@dataclass
class PhaseResult:
    name: str
    events: int
    wall: float
    latencies: list[float]
    cpu: CpuShare
    statuses: Counter
    done: list[int]  # batches each client finished within the time budget

    @property
    def per_second(self) -> float:
        return self.events / self.wall


def catalog_build(clients: int) -> tuple[dict[str, tuple[int, datetime]], dict[str, int]]:
    """The plan and the customers; returns {external id: (pk, period start)} and {meter key: pk}."""
    from plans.models import Meter

    plan_publish(
        "bench-ingest",
        prices=[
            {"meter": "api_call", "model": "per_unit", "unit_amount": "0.002", "included": "5000"},
            {
                "meter": "llm_tokens",
                "model": "dimensional",
                "dimension": "model",
                "rates": {"gpt-4o": "0.00001", "gpt-4o-mini": "0.000001"},
                "default_rate": None,
            },
        ],
    )
    ids = [f"ing-{c}-{n}" for c in range(clients) for n in range(CUSTOMERS_PER_CLIENT)] + ["ing-warm"]
    customers = {}
    for customer in customers_create("bench-ingest", ids):
        customers[customer.external_id] = (customer.pk, customer.subscription.current_period_start)
    meters = dict(Meter.objects.values_list("key", "pk"))
    return customers, meters


def batches_build(
    *,
    clients: int,
    batches: int,
    customers: dict[str, tuple[int, datetime]],
    meters: dict[str, int],
    seed: int = 42,
) -> list[list[Batch]]:
    """``batches`` batches of 1,000 events per client, as request bodies and as raw rows; another ``seed``
    draws other idempotency keys, for a run on a database that holds an earlier run's events."""
    randomness = random.Random(seed)
    now = datetime.now(UTC)
    plan: list[list[Batch]] = []
    for client in range(clients):
        own = [f"ing-{client}-{n}" for n in range(CUSTOMERS_PER_CLIENT)]
        client_batches = []
        for number in range(batches):
            events, rows = [], []
            for index in range(BATCH):
                customer = own[index % len(own)]
                timestamp = now + timedelta(microseconds=index)
                action = randomness.choice(ACTIONS)
                if randomness.random() < 0.7:
                    meter, quantity, properties = "api_call", 1, {"action": action}
                    dimension = ""
                else:
                    model = randomness.choice(MODELS)
                    meter, quantity = "llm_tokens", randomness.randint(100, 5000)
                    properties, dimension = {"action": action, "model": model}, model
                key = f"evt_{client}_{number}_{index:04d}_{randomness.getrandbits(32):08x}"
                user = f"user-{randomness.randrange(USERS_PER_CUSTOMER)}"
                events.append(
                    {
                        "idempotency_key": key,
                        "customer": customer,
                        "meter": meter,
                        "quantity": quantity,
                        "timestamp": timestamp.isoformat(),
                        "user": user,
                        "properties": properties,
                    }
                )
                pk, period_start = customers[customer]
                zero = Decimal(0)
                rows.append(
                    (
                        pk,
                        meters[meter],
                        key,
                        Decimal(quantity),
                        Jsonb(properties),
                        timestamp,
                        timestamp,
                        period_start,
                        action,
                        dimension,
                        True,
                        "usd",
                        zero,
                        zero,
                        zero,
                        zero,
                        zero,
                    )
                )
            client_batches.append(Batch(json.dumps({"events": events}).encode(), rows))
        plan.append(client_batches)
    return plan


def phase_run(
    name: str,
    plan: list[list[Batch]],
    send: Callable[[int, Batch], Counter],
    *,
    server_pid: int,
    budget_s: float,
) -> PhaseResult:
    """Each client sends its batches in order, one at a time, until they are done or ``budget_s`` is up."""
    latencies: list[list[float]] = [[] for _ in plan]
    statuses = [Counter() for _ in plan]
    done = [0] * len(plan)

    def work(client: int) -> None:
        deadline = time.perf_counter() + budget_s
        for batch in plan[client]:
            if time.perf_counter() >= deadline:
                break
            started = time.perf_counter()
            statuses[client] += send(client, batch)
            latencies[client].append(time.perf_counter() - started)
            done[client] += 1

    meter = CpuMeter(server_pid)
    meter.start()
    wall = threads_run(len(plan), work)
    cpu = meter.stop()
    events = sum(
        len(batch.rows) for batches, count in zip(plan, done, strict=True) for batch in batches[:count]
    )
    return PhaseResult(
        name, events, wall, [x for lat in latencies for x in lat], cpu, sum(statuses, Counter()), done
    )


def raw_phase(name: str, plan: list[list[Batch]], server_pid: int) -> PhaseResult:
    """Each client's batches through its own connection: ``executemany`` in one transaction a batch."""
    connections = [psycopg.connect(PG_BENCH_DSN) for _ in plan]

    def send(client: int, batch: Batch) -> Counter:
        conn = connections[client]
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(RAW_EVENT_INSERT, batch.rows)
        return Counter()

    try:
        return phase_run(name, plan, send, server_pid=server_pid, budget_s=RAW_BUDGET_S)
    finally:
        for conn in connections:
            conn.close()


def api_phase(
    name: str, plan: list[list[Batch]], server: Server, api_key: str, budget_s: float
) -> PhaseResult:
    clients = [api_client(server, api_key) for _ in plan]

    def send(client: int, batch: Batch) -> Counter:
        response = clients[client].post("/api/v1/events", content=batch.body)
        if response.status_code != 200:
            raise RuntimeError(f"{name}: HTTP {response.status_code}: {response.text[:500]}")
        return Counter(result["status"] for result in response.json()["results"])

    try:
        return phase_run(name, plan, send, server_pid=server.pid, budget_s=budget_s)
    finally:
        for client in clients:
            client.close()


def warm_up_request():
    numbers = itertools.count()  # next() on a count is atomic under the GIL: one number per request

    def request(client: httpx.Client) -> None:
        number = next(numbers)
        events = [
            {
                "idempotency_key": f"warm-{number}-{i}",
                "customer": "ing-warm",
                "meter": "api_call",
                "user": "u",
            }
            for i in range(100)
        ]
        client.post("/api/v1/events", json={"events": events}).raise_for_status()

    return request


def ingest_steps() -> list[tuple[Any, str, str]]:
    """What to time in a batch: the request's call into ingest and the steps of ``usage.ingest``."""
    import usage.api.views
    import usage.batch_writes
    import usage.ingest
    import usage.recording

    names = [name for name, _ in INGEST_STEPS if name != "usage_events_ingest"]
    return [
        (usage.api.views, "usage_events_ingest", "usage_events_ingest"),
        *[
            (module, name, name)
            for module in (usage.ingest, usage.batch_writes)
            for name in names
            if name in vars(module)
        ],
        (usage.recording.UsageRecorder, "record", "UsageRecorder.record"),
        (usage.recording.UsageRecorder, "_record_limit_crossings", "UsageRecorder._record_limit_crossings"),
        (usage.batch_writes.BatchWrites, "flush", "BatchWrites.flush"),
        (usage.batch_writes, "writes_run", "writes_run (the other rows, one round trip)"),
    ]


# (step, indent): the indented steps run inside the one above them.
INGEST_STEPS = [
    ("whole request", 0),
    ("usage_events_ingest", 1),
    ("events_parse", 2),
    ("resolve_names", 2),
    ("customer_balances_for_update", 2),
    ("events_recorded", 2),
    ("consumption_rows_read", 2),
    ("members_get_or_create", 2),
    ("events_record_for_customer", 2),
    ("check_dimensions", 3),
    ("UsageRecorder.record", 3),
    ("UsageRecorder._record_limit_crossings", 3),
    ("BatchWrites.flush", 2),
    ("events_insert", 3),
    ("writes_run (the other rows, one round trip)", 3),
    ("SQL round trips", 1),
]


def ingest_profile(api_key: str, customers: dict[str, tuple[int, datetime]], meters: dict[str, int]) -> None:
    """New batches for client 0's customers (their rollup rows exist: the steady state) and a replay,
    through the whole request path in this process: a step breakdown (median of 3 batches, no
    profiler), then cProfile of one more batch."""
    from django.test import Client

    warnings.filterwarnings("ignore", message="No directory at")  # whitenoise, in-process only
    client = Client(SERVER_NAME="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {api_key}")

    def post(body: bytes) -> tuple[float, Counter]:
        started = time.perf_counter()
        response = client.post("/api/v1/events", data=body, content_type="application/json")
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.content[:300]
        return elapsed, Counter(result["status"] for result in response.json()["results"])

    def body(prefix: str) -> bytes:
        (batch,) = batches_build(clients=1, batches=1, customers=customers, meters=meters)[0]
        return batch.body.replace(b'"evt_', f'"{prefix}_'.encode())  # new keys: a first write

    post(body("prof-warm"))  # imports the views, opens the connection
    runs: dict[str, list[dict[str, float]]] = {"new batch": [], "replay": []}
    for number in range(3):
        fresh = body(f"prof{number}")
        for kind, expected in (("new batch", "accepted"), ("replay", "duplicate")):
            with steps_timed(ingest_steps()) as steps:
                elapsed, statuses = post(fresh)
            assert statuses == Counter({expected: BATCH}), statuses
            steps["whole request"] = elapsed
            runs[kind].append(dict(steps))
    print(
        "\nprofile: one 1,000-event batch for 10 customers, in-process, no profiler (indented steps run inside)"
    )
    steps_print(runs, INGEST_STEPS)

    profiler = cProfile.Profile()
    payload = body("prof-cprofile")
    profiler.enable()
    post(payload)
    profiler.disable()
    profile_print(profiler, "one new batch")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=CORES, help="client threads (and raw connections)")
    parser.add_argument("--batches", type=int, default=20, help="at most this many batches per client")
    server_arguments(parser)
    parser.add_argument("--profile", action="store_true", help="also profile one batch in-process")
    args = parser.parse_args()

    started = time.perf_counter()
    database_create()
    customers, meters = catalog_build(args.clients)
    api_key = api_key_create()
    raw_events_table_create()
    plan = batches_build(clients=args.clients, batches=args.batches, customers=customers, meters=meters)
    django_connections_close()
    machine_describe(args.workers, args.threads)
    total = args.clients * args.batches * BATCH
    print(
        f"workload: {args.clients} clients × up to {args.batches} batches × {BATCH:,} events = {total:,} events, "
        f"each client on its own {CUSTOMERS_PER_CLIENT} customers; API phases stop at {API_BUDGET_S:.0f} s"
    )

    with gunicorn_running(workers=args.workers, threads=args.threads) as server:
        results = [raw_phase("raw insert", plan, server.pid), raw_phase("raw replay", plan, server.pid)]
        server_warm_up(server, api_key, warm_up_request())
        api = api_phase("API ingest", plan, server, api_key, API_BUDGET_S)
        sent = [batches[:count] for batches, count in zip(plan, api.done, strict=True)]
        api_replay = api_phase("API replay", sent, server, api_key, API_BUDGET_S)
        results += [api, api_replay]
        peaks = server.workers_peak_rss_mb()
    raw, raw_replay = results[:2]

    with psycopg.connect(PG_BENCH_DSN) as conn:
        stored = conn.execute(
            "SELECT count(*) FROM usage_usageevent e JOIN customers_customer c ON c.id = e.customer_id "
            "WHERE c.external_id LIKE 'ing-%%' AND c.external_id <> 'ing-warm'"
        ).fetchone()[0]  # type: ignore[index]
        raw_stored = conn.execute("SELECT count(*) FROM bench_raw_events").fetchone()[0]  # type: ignore[index]
    print(
        f"sent: API {api.events:,} events ({sum(api.done)} of {len(plan) * args.batches} batches within the budget), "
        f"raw {raw.events:,} rows; stored: {stored:,} usage events, {raw_stored:,} raw rows"
    )
    if (
        api.statuses != Counter(accepted=api.events)
        or api_replay.statuses != Counter(duplicate=api_replay.events)
        or stored != api.events
        or raw_stored != raw.events
    ):
        print(f"MISMATCH: ingest answered {dict(api.statuses)}, replay {dict(api_replay.statuses)}")
        return 1
    print()
    table_print(
        ["phase", "events/s", "batch p50", "batch p99", "max", "wall", CPU_HEADER],
        [
            (
                r.name,
                rate(r.per_second),
                ms(percentile(r.latencies, 50)),
                ms(percentile(r.latencies, 99)),
                ms(max(r.latencies)),
                f"{r.wall:.1f} s",
                r.cpu.cells(),
            )
            for r in results
        ],
    )
    print()
    for r in results:
        print(f"  {r.name}: {r.cpu.describe()}")

    ratio = api.per_second / raw.per_second
    replay_ratio = api_replay.per_second / raw_replay.per_second
    p99, replay_p99 = percentile(api.latencies, 99), percentile(api_replay.latencies, 99)
    print(
        f"\ningest: {rate(api.per_second)} events/s via API (p50 {ms(percentile(api.latencies, 50))}, "
        f"p99 {ms(p99)} per batch) vs raw {rate(raw.per_second)} rows/s → {ratio:.0%} "
        f"[target {TARGET_RATIO:.0%}: {verdict(ratio >= TARGET_RATIO)}; p99 <= {ms(TARGET_P99_S)}: "
        f"{verdict(p99 <= TARGET_P99_S)}]"
    )
    print(cpu_cost_line("event", (api.cpu, api.wall, api.events), (raw.cpu, raw.wall, raw.events)))
    others = max(api.cpu.others, api_replay.cpu.others)
    if others > 0.25:
        print(
            f"note: other processes on this machine used up to {others:.2f} of its {CORES} cores during the "
            "API phases; the API figures are lower than on an idle machine."
        )
    print(
        f"replay: {rate(api_replay.per_second)} duplicates/s via API (p50 {ms(percentile(api_replay.latencies, 50))}, "
        f"p99 {ms(replay_p99)} per batch) vs raw {rate(raw_replay.per_second)} rows/s → {replay_ratio:.0%} "
        f"[target {TARGET_RATIO:.0%}: {verdict(replay_ratio >= TARGET_RATIO)}]"
    )

    print(
        cpu_cost_line(
            "replayed event",
            (api_replay.cpu, api_replay.wall, api_replay.events),
            (raw_replay.cpu, raw_replay.wall, raw_replay.events),
        )
    )
    print(peak_rss_line(peaks))
    if args.profile:
        ingest_profile(api_key, customers, meters)
    print(f"\n(total run time {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
