"""Throw-away PostgreSQL server for the test session.

Uses the system server binaries (Debian layout: ``/usr/lib/postgresql/<ver>/bin``,
newest version wins; falls back to ``initdb``/``pg_ctl`` on ``PATH``). The cluster
lives in a temporary directory, listens on 127.0.0.1 on a free port (plus a unix
socket in the temp dir), runs with durability switched off for speed, and is
stopped and deleted by :meth:`PostgresServer.stop`.

``initdb`` and ``postgres`` refuse to run as root, so when the effective uid is 0
they are run as the ``postgres`` OS user (via ``runuser``, or ``setpriv``) and the
temp directory is handed over to that user.
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

PG_ROOT = Path("/usr/lib/postgresql")
OS_USER = "postgres"  # OS account used to run the server when we are root
SUPERUSER = "postgres"  # database superuser created by initdb

_DB_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Unix socket paths are limited to ~107 bytes; leave room for "/.s.PGSQL.NNNNN".
_MAX_SOCKET_DIR_LEN = 90


class PostgresBinariesNotFound(RuntimeError):
    """The PostgreSQL server binaries (initdb, pg_ctl, postgres) are not installed."""


class PostgresStartError(RuntimeError):
    """The throw-away server could not be initialised or started."""


def find_pg_bindir() -> Path:
    """Return the bin dir of the newest installed PostgreSQL server.

    Raises :class:`PostgresBinariesNotFound` with an explanatory message if none.
    """

    def complete(bindir: Path) -> bool:
        return all(os.access(bindir / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres"))

    candidates: list[tuple[tuple[int, ...], Path]] = []
    if PG_ROOT.is_dir():
        for entry in PG_ROOT.iterdir():
            version = tuple(int(p) for p in entry.name.split(".") if p.isdigit())
            if version and complete(entry / "bin"):
                candidates.append((version, entry / "bin"))
    if candidates:
        return max(candidates)[1]

    initdb = shutil.which("initdb")
    if initdb and complete(Path(initdb).resolve().parent):
        return Path(initdb).resolve().parent

    raise PostgresBinariesNotFound(
        f"PostgreSQL server binaries not found: no {PG_ROOT}/<version>/bin with "
        "initdb, pg_ctl and postgres, and no initdb on PATH. "
        "Install the Debian 'postgresql' package (apt-get install postgresql)."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _world_traversable(path: Path) -> bool:
    """True if every directory from / down to ``path`` is searchable by others."""
    for p in [path, *path.parents]:
        try:
            if not os.stat(p).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _quote_conf(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PostgresServer:
    """A private PostgreSQL cluster in a temp dir. Use :meth:`start` / :meth:`stop`
    (or as a context manager) and :meth:`create_database` to get SQLAlchemy URLs."""

    host = "127.0.0.1"

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = Path(bindir) if bindir is not None else find_pg_bindir()
        self.as_root = os.geteuid() == 0
        self.port: int | None = None
        self.base_dir: Path | None = None
        self.startup_seconds: float | None = None
        self._wrap: list[str] = []
        self._running = False

    # -- paths -------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None, "server not started"
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.base_dir is not None, "server not started"
        return self.base_dir  # short path; the data dir is a subdirectory

    @property
    def log_file(self) -> Path:
        assert self.base_dir is not None, "server not started"
        return self.base_dir / "postgres.log"

    # -- process helpers -------------------------------------------------------------
    def _run_as_wrapper(self) -> list[str]:
        if not self.as_root:
            return []
        runuser = shutil.which("runuser")
        if runuser:
            return [runuser, "-u", OS_USER, "--"]
        setpriv = shutil.which("setpriv")
        if setpriv:
            return [setpriv, f"--reuid={OS_USER}", f"--regid={OS_USER}", "--init-groups", "--"]
        raise PostgresStartError(
            "Running as root, but neither 'runuser' nor 'setpriv' is available to drop "
            f"privileges to the '{OS_USER}' user (initdb/postgres refuse to run as root)."
        )

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # Keep PG* variables from the caller's environment (PGDATA, PGPORT, ...) out.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        cmd = [*self._wrap, str(self.bindir / args[0]), *args[1:]]
        proc = subprocess.run(
            cmd,
            cwd=self.base_dir,  # an OS_USER-accessible cwd (root's cwd may not be)
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and proc.returncode != 0:
            raise PostgresStartError(
                f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n"
                f"{proc.stdout}{proc.stderr}{self._log_tail()}"
            )
        return proc

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""
        tail = "\n".join(text.splitlines()[-lines:])
        return f"\n--- {self.log_file} (tail) ---\n{tail}" if tail else ""

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> PostgresServer:
        if self._running:
            return self
        t0 = time.perf_counter()
        self._wrap = self._run_as_wrapper()
        self.base_dir = self._make_base_dir()
        try:
            self._initdb()
            self._start_server()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - t0
        atexit.register(self.stop)  # safety net if the fixture teardown never runs
        return self

    def _make_base_dir(self) -> Path:
        parent = Path(tempfile.gettempdir())
        if len(str(parent)) > _MAX_SOCKET_DIR_LEN - 30 or (
            self.as_root and not _world_traversable(parent)
        ):
            parent = Path("/tmp")
        base = Path(tempfile.mkdtemp(prefix="custctx-pg-", dir=parent))
        if self.as_root:
            try:
                pw = pwd.getpwnam(OS_USER)
            except KeyError:
                shutil.rmtree(base, ignore_errors=True)
                raise PostgresStartError(
                    f"Running as root, but there is no '{OS_USER}' OS user to run the "
                    "server as (initdb/postgres refuse to run as root). Install the "
                    "Debian 'postgresql' package, which creates it."
                ) from None
            os.chown(base, pw.pw_uid, pw.pw_gid)
        return base

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D", str(self.data_dir),
            "-A", "trust",
            "-U", SUPERUSER,
            "--no-sync",
            "-E", "UTF8",
            "--locale=C",
        )  # fmt: skip
        settings = {
            "listen_addresses": _quote_conf(self.host),
            "unix_socket_directories": _quote_conf(str(self.socket_dir)),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        conf = "".join(f"{k} = {v}\n" for k, v in settings.items())
        # initdb created the file as OS_USER; appending as root keeps its ownership.
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as fh:
            fh.write("\n# custctx test settings\n" + conf)

    def _start_server(self, attempts: int = 3) -> None:
        for attempt in range(1, attempts + 1):
            port = _free_port()
            proc = self._run(
                "pg_ctl",
                "start",
                "-w",
                "-t", "60",
                "-D", str(self.data_dir),
                "-l", str(self.log_file),
                "-o", f"-p {port}",
                check=False,
            )  # fmt: skip
            if proc.returncode == 0:
                self.port = port
                self._running = True
                return
            # Most likely the port was grabbed between probing and binding; retry.
            if attempt == attempts:
                raise PostgresStartError(
                    f"pg_ctl start failed with exit code {proc.returncode}:\n"
                    f"{proc.stdout}{proc.stderr}{self._log_tail()}"
                )

    def stop(self) -> None:
        """Stop the server (immediate mode) and delete the temp dir. Idempotent."""
        self._running = False
        if self.base_dir is not None:
            # Also covers a server left half-started by a failed/timed-out start().
            if (self.data_dir / "postmaster.pid").exists():
                self._run(
                    "pg_ctl", "stop", "-m", "immediate", "-w", "-D", str(self.data_dir), check=False
                )  # fmt: skip
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------------
    def url(self, dbname: str) -> str:
        if self.port is None:
            raise RuntimeError("PostgreSQL test server is not running")
        return f"postgresql+psycopg://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """Create a database (a fresh unique name if ``name`` is None) and return its
        SQLAlchemy URL ``postgresql+psycopg://postgres@127.0.0.1:PORT/name``."""
        import psycopg
        from psycopg import sql

        if name is None:
            name = f"test_{uuid.uuid4().hex[:16]}"
        if not _DB_NAME_RE.match(name):
            raise ValueError(f"invalid test database name {name!r} (use [A-Za-z0-9_], max 63)")
        if self.port is None:
            raise RuntimeError("PostgreSQL test server is not running")
        with psycopg.connect(
            host=self.host, port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)
