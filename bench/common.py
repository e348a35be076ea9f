"""What the benchmarks share: a fresh database built through the app's services, gunicorn, timing and tables.

Each benchmark is one process. It recreates the database ``billing_bench``, sets Django up in-process
with the same environment gunicorn gets (so the catalog, customers and API key are made by the app's own
services), starts gunicorn on a free port of 127.0.0.1, drives it from client threads, and stops it in
``finally``. Everything talks to 127.0.0.1 only, and every phase has a fixed request count and a deadline.
"""

import cProfile
import functools
import io
import os
import pstats
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg

REPO = Path(__file__).resolve().parent.parent
# ``BENCH_DB_NAME`` lets engineers sharing one PostgreSQL bench in their own database.
DB_NAME = os.environ.get("BENCH_DB_NAME", "billing_bench")
PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
PG_BENCH_DSN = f"host=127.0.0.1 port=5432 user=postgres dbname={DB_NAME}"
# The environment of both the bench process (setup through the services) and gunicorn. Tasks run
# in-process, so nothing is queued; Redis on loopback is the cache every request counts itself in for
# the rate limit, as in production, with a limit no benchmark reaches. LOG_LEVEL keeps request noise
# out of the log.
BENCH_ENV = {
    "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
    "DEBUG": "false",
    "SECRET_KEY": "bench",
    "ALLOWED_HOSTS": "127.0.0.1",
    "CELERY_TASK_ALWAYS_EAGER": "true",
    "REDIS_URL": "redis://127.0.0.1:6379/13",
    "API_RATE_LIMIT_PER_MINUTE": "100000000",
    "LOG_LEVEL": "WARNING",
    "DJANGO_SETTINGS_MODULE": "billing_app.settings",
}
CORES = os.cpu_count() or 1
# Requests are CPU-bound Python and PostgreSQL shares the same cores: 2 workers per core (4 on 2 cores)
# keep a core busy while another worker waits on a row lock or a commit; more only add context switches
# (on reserve, 2 and 8 measured the same as 4 within the noise). ``--workers`` overrides it.
DEFAULT_WORKERS = 2 * CORES
HTTP_TIMEOUT_S = 30.0


# --- database and setup --------------------------------------------------------------------------


def django_setup() -> None:
    """Configure Django in this process against ``billing_bench``, as gunicorn will be."""
    os.environ.update(BENCH_ENV)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import django

    django.setup()


def database_create() -> None:
    """Drop and recreate ``billing_bench``, then migrate it (and set Django up in this process)."""
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    django_setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


def plan_publish(code: str, *, prices: list[dict[str, Any]], entitlements: Sequence[dict[str, Any]] = ()):
    """Publish a USD monthly plan from catalog-shaped price dicts, creating its meters (as the tests do)."""
    from plans.models import Plan
    from plans.services import meter_upsert, plan_version_create, plan_version_publish

    for price in prices:
        meter_upsert(
            key=price["meter"], name=price["meter"].replace("_", " ").title(), unit="unit", aggregation="sum"
        )
    plan, _ = Plan.objects.get_or_create(code=code, defaults={"name": code.replace("-", " ").title()})
    version = plan_version_create(
        plan=plan,
        currency="usd",
        interval="month",
        base_fee=Decimal(0),
        prices=prices,
        entitlements=list(entitlements),
        credit_packs=[],
    )
    return plan_version_publish(plan_version=version)


def customers_create(plan_code: str, external_ids: Sequence[str], *, credits: Decimal | None = None) -> list:
    """Customers subscribed to ``plan_code``, each granted ``credits`` when given."""
    from customers.services import customer_create
    from usage.services import credit_grant_create

    customers = []
    for external_id in external_ids:
        customer = customer_create(external_id=external_id, name=external_id, plan_code=plan_code)
        if credits is not None:
            credit_grant_create(customer=customer, amount=credits, description="bench")
        customers.append(customer)
    return customers


def api_key_create() -> str:
    from billing_app.models import ApiKey

    _, raw_key = ApiKey.generate(name="bench")
    return raw_key


def django_connections_close() -> None:
    from django.db import connections

    connections.close_all()


RAW_EVENTS_TABLE = "bench_raw_events"
RAW_EVENT_COLUMNS = (
    "customer_id",
    "meter_id",
    "idempotency_key",
    "quantity",
    "properties",
    "timestamp",
    "received_at",
    "period_start",
    "action",
    "dimension_value",
    "billable",
    "cost_unit",
    "cost",
    "included_quantity",
    "credits_amount",
    "wallet_amount",
    "overage_amount",
)
RAW_EVENT_INSERT = (
    f"INSERT INTO {RAW_EVENTS_TABLE} ({', '.join(RAW_EVENT_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(RAW_EVENT_COLUMNS))}) ON CONFLICT DO NOTHING"
)


def raw_events_table_create() -> None:
    """A plain table shaped like the usage ledger, with its defaults, checks and indexes (not its FKs, triggers
    or partitions), and the unique index on (customer, idempotency key) the ledger keeps in its keys table.
    Its ids come from the ledger's sequence (the copied default)."""
    with psycopg.connect(PG_BENCH_DSN, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {RAW_EVENTS_TABLE}")
        conn.execute(
            f"CREATE TABLE {RAW_EVENTS_TABLE} (LIKE usage_usageevent INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
            "INCLUDING INDEXES)"
        )
        conn.execute(f"CREATE UNIQUE INDEX ON {RAW_EVENTS_TABLE} (customer_id, idempotency_key)")


# --- gunicorn -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    base_url: str
    pid: int
    workers: int
    log_path: str

    def workers_peak_rss_mb(self) -> list[float]:
        """Each worker's peak resident memory so far (VmHWM), in MB: read before the server stops."""
        peaks = []
        for pid, (ppid, _) in _all_processes().items():
            if ppid != self.pid:
                continue
            try:
                status = (Path("/proc") / str(pid) / "status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        return sorted(peaks)


def peak_rss_line(peaks_mb: Sequence[float]) -> str:
    cells = ", ".join(f"{peak:.0f}" for peak in peaks_mb)
    return f"  peak RSS per gunicorn worker: {cells} MB (VmHWM, read at the end of the API phases)"


def server_arguments(parser: Any) -> None:
    """The gunicorn options every benchmark takes."""
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="gunicorn workers")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads per worker: above 1, gthread workers (which keep client connections alive)",
    )


def _log_tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def gunicorn_running(*, workers: int, threads: int = 1) -> Iterator[Server]:
    """gunicorn on a free port of 127.0.0.1; stopped on the way out, whatever happened.

    Sync workers (``threads`` 1) close the connection after each response, so the clients' keep-alive
    saves nothing there: every request opens a new local TCP connection (about 0.1 ms on loopback).
    With ``threads`` above 1, gthread workers serve that many requests at once each and keep connections.
    """
    port = free_port()
    gunicorn = Path(sys.executable).parent / "gunicorn"
    log = tempfile.NamedTemporaryFile(prefix="bench-gunicorn-", suffix=".log", delete=False)  # noqa: SIM115
    command = [
        str(gunicorn),
        "billing_app.wsgi",
        "-w",
        str(workers),
        "-b",
        f"127.0.0.1:{port}",
        "--timeout",
        "120",
        "--graceful-timeout",
        "5",
        "--log-level",
        "warning",
        *(["--worker-class", "gthread", "--threads", str(threads)] if threads > 1 else []),
    ]
    # A session of its own: a Ctrl-C reaches the benchmark, whose ``finally`` stops gunicorn cleanly.
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, **BENCH_ENV},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(f"http://127.0.0.1:{port}", process.pid, workers, log.name)
    try:
        _wait_until_answering(server, process)
        _wait_until_settled(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()
        problems = [
            line for line in _log_tail(log.name, 200).splitlines() if "Traceback" in line or "ERROR" in line
        ]
        if problems:
            print(f"  (gunicorn logged {len(problems)} error line(s); see {log.name})")
        else:
            os.unlink(log.name)


def _wait_until_answering(server: Server, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{_log_tail(server.log_path)}")
        try:
            # Unauthenticated, so any answer (401) means a worker is serving.
            httpx.post(f"{server.base_url}/api/v1/check", timeout=2.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not answer within {timeout_s:.0f} s:\n{_log_tail(server.log_path)}")


def _wait_until_settled(server: Server, timeout_s: float = 20.0) -> None:
    """One worker answering does not mean the others have finished importing Django: wait until the
    gunicorn processes are idle, so that their boot does not run during the first (raw) phase."""
    deadline = time.perf_counter() + timeout_s

    def tree_cpu_s() -> float:
        processes = _all_processes()
        return sum(cpu for pid, (ppid, cpu) in processes.items() if server.pid in (pid, ppid))

    while time.perf_counter() < deadline:
        before = tree_cpu_s()
        time.sleep(0.3)
        if tree_cpu_s() - before < 0.3 * 0.05:
            return


def api_client(server: Server, api_key: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        timeout=HTTP_TIMEOUT_S,
    )


def server_warm_up(server: Server, api_key: str, request: Callable[[httpx.Client], Any]) -> None:
    """Send a few rounds of ``request`` from as many threads as workers, so that each worker has
    imported its views and opened its database connection before anything is timed."""

    def work(_: int) -> None:
        with api_client(server, api_key) as client:
            for _ in range(3):
                request(client)

    threads_run(server.workers * 2, work)


# --- running and measuring ------------------------------------------------------------------------


def threads_run(count: int, work: Callable[[int], None]) -> float:
    """Run ``work(0)`` … ``work(count - 1)`` in threads released together; return the wall seconds.

    The first error of any thread is raised once all have finished (each is bounded by its own
    request count, deadline and the HTTP timeout, so joining always ends).
    """
    barrier = threading.Barrier(count + 1)
    errors: list[BaseException] = []

    def target(index: int) -> None:
        barrier.wait()
        try:
            work(index)
        except BaseException as error:  # surfaced in the main thread below
            errors.append(error)

    threads = [threading.Thread(target=target, args=(index,), daemon=True) for index in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return wall


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class CpuShare:
    """Where the CPU went during a phase, in cores (1.0 = one core busy for the whole phase)."""

    client: float
    server: float
    postgres: float
    others: float  # processes that are not this benchmark's: other work on a shared machine

    def describe(self) -> str:
        ours = {"client": self.client, "gunicorn": self.server, "postgres": self.postgres}
        busiest = max(ours, key=lambda name: ours[name])
        # One busy core is all a thread pool gets under the GIL: near it, the client limits the phase.
        client = "the client limits this phase" if self.client >= 0.8 else "the client is not the limit"
        return (
            f"CPU in cores: client {self.client:.2f}, gunicorn {self.server:.2f}, postgres {self.postgres:.2f}, "
            f"other processes {self.others:.2f} (of {CORES}; ours mostly {busiest}; {client})"
        )

    def cells(self) -> str:
        return f"{self.client:.2f} / {self.server:.2f} / {self.postgres:.2f} / {self.others:.2f}"


def cpu_cost_line(unit: str, api: tuple[CpuShare, float, int], raw: tuple[CpuShare, float, int]) -> str:
    """CPU spent per unit of work: a figure that other load on the machine changes far less than rates.

    Each argument is (CPU share, wall seconds, units done). The API's cost is gunicorn + PostgreSQL; the
    raw baseline's is its psycopg client + PostgreSQL (the client stands in for the application there).
    """
    api_cpu, api_wall, api_units = api
    raw_cpu, raw_wall, raw_units = raw
    api_ms = (api_cpu.server + api_cpu.postgres) * api_wall / api_units * 1000
    raw_ms = (raw_cpu.client + raw_cpu.postgres) * raw_wall / raw_units * 1000
    return (
        f"  CPU per {unit}: API {api_ms:.3g} ms (gunicorn + postgres) vs raw {raw_ms:.3g} ms "
        f"(psycopg client + postgres) → the API costs {api_ms / raw_ms:.0f}× raw"
    )


CPU_HEADER = "CPU cores: client/gunicorn/pg/other"


class CpuMeter:
    """CPU seconds of this process, the gunicorn tree, this database's PostgreSQL processes and every other
    process between ``start`` and ``stop``, all from the per-process counters in /proc (the machine-wide
    counters in /proc/stat disagree with them on this VM). A process that starts mid-phase counts from
    zero; one that ends mid-phase is missed, so the phases keep their connections open throughout."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid

    def _postgres_pids(self) -> set[int]:
        # This database's backends and the shared background processes (no database), not other databases'.
        rows = self.monitor.execute(
            "SELECT pid FROM pg_stat_activity WHERE (datname = %s OR datname IS NULL) AND pid <> pg_backend_pid()",
            [DB_NAME],
        ).fetchall()
        return {row[0] for row in rows}

    def _sample(self) -> tuple[float, float, dict[int, float], set[int], set[int]]:
        processes = _all_processes()
        server = {self.server_pid} | {pid for pid, (ppid, _) in processes.items() if ppid == self.server_pid}
        cpu = {pid: seconds for pid, (_, seconds) in processes.items()}
        return time.perf_counter(), time.process_time(), cpu, server, self._postgres_pids()

    def start(self) -> None:
        self.monitor = psycopg.connect(PG_BENCH_DSN, autocommit=True)
        self.monitor_pid = self.monitor.info.backend_pid
        self._start = self._sample()

    def stop(self) -> CpuShare:
        wall_end, client_end, cpu_end, server, postgres = self._sample()
        self.monitor.close()
        wall_start, client_start, cpu_start, server_start, postgres_start = self._start
        wall = wall_end - wall_start
        server |= server_start
        postgres |= postgres_start
        ours = server | postgres | {os.getpid(), self.monitor_pid}

        def grown(pids: Iterator[int] | set[int]) -> float:
            return sum(cpu_end[pid] - cpu_start.get(pid, 0.0) for pid in pids if pid in cpu_end)

        others = grown(pid for pid in cpu_end if pid not in ours)
        return CpuShare(
            (client_end - client_start) / wall, grown(server) / wall, grown(postgres) / wall, others / wall
        )


def _all_processes() -> dict[int, tuple[int, float]]:
    """{pid: (parent pid, CPU seconds)} for every process of the machine."""
    processes = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        processes[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS)
    return processes


# --- profiling in-process ----------------------------------------------------------------------


@contextmanager
def steps_timed(patches: Sequence[tuple[Any, str, str]]) -> Iterator[dict[str, float]]:
    """Seconds spent in each ``(owner, name, label)`` callable (module functions, classes, manager methods)
    and in SQL while the block runs, by wrapping them where the code looks them up. A nested step counts
    in its own line and in its caller's."""
    from django.db import connection

    totals: dict[str, float] = defaultdict(float)

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals[name] += time.perf_counter() - started

        return wrapper

    def sql(execute, query, params, many, context):
        started = time.perf_counter()
        try:
            return execute(query, params, many, context)
        finally:
            totals["SQL round trips"] += time.perf_counter() - started
            totals["SQL statements"] += 1

    # A step the code no longer has (renamed, moved) is left out: its line in the table shows "-".
    saved = [
        (owner, name, vars(owner).get(name, _MISSING), getattr(owner, name), label)
        for owner, name, label in patches
        if hasattr(owner, name)
    ]
    for owner, name, _, function, label in saved:
        setattr(owner, name, timed(label, function))
    try:
        with connection.execute_wrapper(sql):
            yield totals
    finally:
        for owner, name, own, _, _ in saved:
            if own is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, own)


_MISSING = object()


def steps_print(runs: dict[str, list[dict[str, float]]], rows: Sequence[tuple[str, int]]) -> None:
    """A table of the median of each step over the runs of each kind; ``rows`` are (step, indent)."""
    table = []
    for name, indent in rows:
        cells = []
        for kind_runs in runs.values():
            values = [run.get(name, 0.0) for run in kind_runs]
            cells.append(ms(statistics.median(values)) if any(values) else "-")
        table.append(("  " * indent + name, *cells))
    counts = [
        statistics.median(run.get("SQL statements", 0) for run in kind_runs) for kind_runs in runs.values()
    ]
    table.append(("SQL statements", *(f"{count:.0f}" for count in counts)))
    table_print(["step (median)", *runs], table)


PROJECT_APPS = ("usage", "plans", "customers", "billing_app")
SITE_PACKAGES = f"{Path(httpx.__file__).resolve().parent.parent}/"


def profile_print(profiler: cProfile.Profile, what: str, limit: int = 16) -> None:
    """The top functions of a cProfile run: by own time over all code, and by cumulative time in ours."""
    project = "|".join(f"^{REPO}/{app}/" for app in PROJECT_APPS)
    for sort, title, restriction in (
        ("tottime", "own time, all code", None),
        ("cumulative", "cumulative time, project code", project),
    ):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).sort_stats(sort)
        stats.print_stats(*([restriction] if restriction else []), limit)
        lines = out.getvalue().splitlines()
        first = next(i for i, line in enumerate(lines) if line.strip().startswith("ncalls"))
        print(f"\n  cProfile of {what} (times inflated by the profiler), by {title}:")
        for line in lines[first:]:
            if line.strip():
                print("  " + line.replace(SITE_PACKAGES, "").replace(f"{REPO}/", ""))


# --- figures -------------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0–100) with linear interpolation between the closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 0.1 else f"{seconds * 1000:,.0f} ms"


def rate(value: float) -> str:
    return f"{value:,.0f}"


def table_print(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned table: first column left, the others right."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    print("  " + line(cells[0]))
    print("  " + "  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print("  " + line(row))


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def machine_describe(workers: int | None = None, threads: int = 1) -> None:
    with psycopg.connect(PG_BENCH_DSN) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        sync = conn.execute("SHOW synchronous_commit").fetchone()[0]  # type: ignore[index]
    kind = f"gthread workers × {threads} threads" if threads > 1 else "sync workers"
    served = f", gunicorn {workers} {kind}" if workers else ""
    print(
        f"machine: {CORES} cores, Python {sys.version.split()[0]}, PostgreSQL {version} "
        f"(synchronous_commit={sync}){served}; all traffic on 127.0.0.1"
    )
    before, started = _all_processes(), time.perf_counter()
    time.sleep(1.0)
    after = _all_processes()
    busy = sum(
        cpu - before.get(pid, (0, 0.0))[1] for pid, (_, cpu) in after.items() if pid != os.getpid()
    ) / (time.perf_counter() - started)
    if busy > 0.25:
        print(
            f"warning: {busy:.2f} of {CORES} cores were busy with other work just before the run; "
            "figures will be lower than on an idle machine (see the 'other' CPU column)"
        )
