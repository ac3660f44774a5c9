"""A throwaway PostgreSQL server on 127.0.0.1 for the test session: the ``postgres`` fixture.

The server comes from Debian's ``postgresql`` package (``make test`` installs it when
``/usr/lib/postgresql/*/bin/initdb`` is missing). The fixture runs ``initdb`` into a pytest
temp dir, starts ``postgres`` listening on 127.0.0.1 only, on a free port, with its unix
socket in that temp dir and durability off (``fsync``, ``synchronous_commit``,
``full_page_writes``: the data is thrown away), creates a database and a login user with a
password, and yields a :class:`Postgres`. At teardown, also after failed tests, it stops
the server by its PID (fast shutdown, SIGKILL to its process group after a grace period).

``initdb`` and ``postgres`` refuse to run as root: as root they run as the ``postgres`` OS
user, which owns the server's directory (its ancestors under pytest's base temp dir get
the search bit so that user can reach it); as another user they run as that user.

Interface (stable; other test modules rely on it)::

    postgres.host, postgres.port, postgres.database, postgres.user, postgres.password
    postgres.jdbc_url        # "jdbc:postgresql://127.0.0.1:PORT/DB"
    postgres.jdbc_properties # {"user", "password", "driver"} for spark.read/write.jdbc
    postgres.sql(statement)  # rows of the last statement, as tuples of str (NULL -> None)
    postgres.sql(statement, superuser=True)  # the same as the superuser "postgres"
    postgres.start_seconds   # how long initdb + start + set-up took

The session shares one server: each test module uses its own table names.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from standalone import free_ports, log_tail

__all__ = ["Postgres", "postgres", "postgres_bin_dir", "running_postgres"]

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0
SQL_TIMEOUT_S = 60.0
DRIVER_CLASS = "org.postgresql.Driver"
DATABASE = "sparkml"
USER = "sparkml_test"
PASSWORD = "sparkml-test-pw"
SUPERUSER = "postgres"
# Separators psql cannot confuse with data in these tests: ASCII unit / record separators.
_FIELD_SEP = "\x1f"
_RECORD_SEP = "\x1e"
_NULL = "\x07NULL\x07"  # psql prints NULL as this marker


def postgres_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` that has ``initdb`` (Debian's
    layout), else the directory of an ``initdb`` on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError(
        "No PostgreSQL server binaries (initdb) under /usr/lib/postgresql/*/bin or on PATH: "
        "run `make test`, which installs Debian's postgresql package, or "
        "`apt-get install -y postgresql`."
    )


@dataclass(frozen=True)
class Postgres:
    """A running server: where it listens, who may log in, and a way to run SQL."""

    host: str
    port: int
    database: str
    user: str
    password: str
    socket_dir: Path
    bin_dir: Path
    log_file: Path
    pid: int
    start_seconds: float = field(default=0.0, compare=False)

    @property
    def jdbc_url(self) -> str:
        """``jdbc:postgresql://127.0.0.1:PORT/DB`` (no credentials in it)."""
        return f"jdbc:postgresql://{self.host}:{self.port}/{self.database}"

    @property
    def jdbc_properties(self) -> dict[str, str]:
        """Connection properties for ``spark.read.jdbc`` / ``DataFrame.write.jdbc``."""
        return {"user": self.user, "password": self.password, "driver": DRIVER_CLASS}

    def sql(self, statement: str, *, superuser: bool = False) -> list[tuple[str | None, ...]]:
        """Run ``statement`` with psql and return the rows of its last result.

        Values are psql's text forms (``42``, ``2024-06-01 00:00:00+00``, ``t``), NULL is
        None; a statement without a result gives ``[]``. The test user connects over TCP
        with its password; ``superuser=True`` connects through the unix socket as
        ``postgres``. The session's time zone is UTC. A failing statement raises
        ``RuntimeError`` with psql's message.
        """
        if superuser:
            target = ["-h", str(self.socket_dir), "-U", SUPERUSER, "-d", self.database]
        else:
            target = ["-h", self.host, "-U", self.user, "-d", self.database]
        env = {**os.environ, "PGPASSWORD": self.password, "PGTZ": "UTC", "PGCONNECT_TIMEOUT": "10"}
        env.pop("PGSERVICE", None)
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",  # no ~/.psqlrc
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-F",
                _FIELD_SEP,
                "-R",
                _RECORD_SEP,
                "-P",
                f"null={_NULL}",
                "-p",
                str(self.port),
                *target,
                "-c",
                statement,
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SQL_TIMEOUT_S,
        )
        if result.returncode != 0:
            gone = (
                ""
                if _running(self.pid)
                else (
                    f" The server (PID {self.pid}) is not running; {self.log_file}:\n"
                    f"{log_tail(self.log_file, 20)}"
                )
            )
            raise RuntimeError(
                f"psql failed (exit {result.returncode}) on {statement!r}: "
                f"{result.stderr.strip()}{gone}"
            )
        out = result.stdout
        if out.endswith("\n"):
            out = out[:-1]
        if not out:
            return []
        return [
            tuple(None if value == _NULL else value for value in record.split(_FIELD_SEP))
            for record in out.split(_RECORD_SEP)
        ]


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line[stat_line.rfind(")") + 2 :].split()[0] != "Z"


def _server_user() -> pwd.struct_passwd | None:
    """The OS user to run the server as: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as err:
        raise RuntimeError(
            "Running as root, but there is no `postgres` OS user to run the server as "
            "(PostgreSQL refuses root): install Debian's postgresql package, which creates it."
        ) from err


def _let_user_reach(path: Path, stop_at: Path) -> None:
    """Give others the search bit (only ``x``, no listing) on ``path``'s ancestors up to
    and including ``stop_at``, so the server's OS user can reach its directory."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
        if parent == stop_at:
            break


def _run_as(
    account: pwd.struct_passwd | None, args: list[str], log: Path
) -> subprocess.CompletedProcess[bytes]:
    with log.open("ab") as out:
        return subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_server_env(account),
            timeout=START_TIMEOUT_S,
            **_as_user(account),
        )


def _server_env(account: pwd.struct_passwd | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", TZ="UTC")
    if account is not None:
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    return env


def _as_user(account: pwd.struct_passwd | None) -> dict[str, object]:
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": [], "cwd": "/"}


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Fast shutdown by PID (SIGINT to the postmaster), SIGKILL to its group if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_GRACE_S)
    # Backends of a killed postmaster exit on their own; make sure none is left.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_postgres(root: Path, reach_from: Path | None = None) -> Iterator[Postgres]:
    """Run a server with its files under ``root`` (created); stop it however the block ends.

    ``reach_from``: the outermost directory that may need the search bit for the server's
    OS user (pytest's base temp dir); default ``root``'s parent.
    """
    started = time.monotonic()
    bin_dir = postgres_bin_dir()
    account = _server_user()
    root.mkdir(parents=True, exist_ok=True)
    data, sockets, log = root / "data", root / "socket", root / "server.log"
    sockets.mkdir(exist_ok=True)
    log.touch()
    if account is not None:
        _let_user_reach(root, reach_from or root.parent)
        for path in (root, sockets, log):
            os.chown(path, account.pw_uid, account.pw_gid)
    init = _run_as(
        account,
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
        log,
    )
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed (exit {init.returncode}). {log}:\n{log_tail(log)}")
    (port,) = free_ports(1)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={sockets}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "timezone=UTC",
                "-c",
                "max_connections=50",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_server_env(account),
            start_new_session=True,
            **_as_user(account),  # type: ignore[arg-type]
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            ready = subprocess.run(
                [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )
            if ready.returncode == 0:
                break
            if process.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with code {process.returncode} on start-up. "
                    f"{log}:\n{log_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"postgres not accepting connections on 127.0.0.1:{port} after "
                    f"{START_TIMEOUT_S:.0f} s. {log}:\n{log_tail(log)}"
                )
            time.sleep(0.1)
        server = Postgres(
            host="127.0.0.1",
            port=port,
            database="postgres",
            user=USER,
            password=PASSWORD,
            socket_dir=sockets,
            bin_dir=bin_dir,
            log_file=log,
            pid=process.pid,
        )
        server.sql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'", superuser=True)
        server.sql(f"CREATE DATABASE {DATABASE} OWNER {USER}", superuser=True)
        yield Postgres(
            host=server.host,
            port=port,
            database=DATABASE,
            user=USER,
            password=PASSWORD,
            socket_dir=sockets,
            bin_dir=bin_dir,
            log_file=log,
            pid=process.pid,
            start_seconds=time.monotonic() - started,
        )
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """One PostgreSQL server for the test session (see the module docstring)."""
    with running_postgres(
        tmp_path_factory.mktemp("postgres"), reach_from=tmp_path_factory.getbasetemp().parent
    ) as server:
        yield server
