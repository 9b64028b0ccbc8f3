"""Run a real PowerDNS authoritative server (4.7, SQLite backend) as a child process.

Used by the tests, the benchmarks and ``xplane up``. The configuration is the one
in ``real-components.md``: LUA records on, no outbound security poll, a real SOA
default, the HTTP API on loopback. The server runs in its own process group and
is stopped by PID (SIGTERM, then SIGKILL), never by name.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx

from xplane.netutil import free_port
from xplane.procs import spawn

PDNS_BINARY = "pdns_server"
LOOPBACK = "127.0.0.1"
SCHEMA_NAME = "schema.sqlite3.sql"
SCHEMA_ENV = "XPLANE_PDNS_SCHEMA"
# Where distributions put the SQLite backend's schema, relative to the file system root:
# Debian/Ubuntu, older Debian, Fedora/RHEL/Alpine, Arch, source builds, Homebrew.
SCHEMA_LOCATIONS = (
    "usr/share/pdns-backend-sqlite3/schema",
    "usr/share/doc/pdns-backend-sqlite3",
    "usr/share/doc/pdns",
    "usr/share/doc/powerdns",
    "usr/local/share/doc/pdns",
    "opt/homebrew/share/doc/pdns",
)
# Last resort, globbed under the root: any package's (schema) folder with the file.
SCHEMA_GLOBS = (
    "usr/share/*/schema",
    "usr/share/doc/*",
    "usr/local/share/*",
    "usr/local/share/doc/*",
)
# Package managers that can list a package's files (name, command).
_PACKAGE_LISTERS = (
    ("dpkg", ("dpkg", "-L", "pdns-backend-sqlite3")),
    ("rpm", ("rpm", "-ql", "pdns-backend-sqlite")),
)


def _packaged_schema() -> Path | None:
    """The schema as the package manager lists it (a layout none of the above guessed)."""
    for tool, command in _PACKAGE_LISTERS:
        if shutil.which(tool) is None:
            continue
        try:
            listed = subprocess.run(command, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        for line in listed.stdout.splitlines():
            path = Path(line.strip())
            if path.name == SCHEMA_NAME and path.is_file():
                return path
    return None


def find_schema(
    environ: Mapping[str, str] | None = None,
    root: Path = Path("/"),
    *,
    ask_packages: bool = True,
) -> Path | None:
    """The PowerDNS SQLite schema: ``$XPLANE_PDNS_SCHEMA``, the distributions' known
    locations, what ``dpkg``/``rpm`` list for the backend package, then a glob. None
    when not installed (``pdns_server`` alone cannot serve the SQLite backend)."""
    env = os.environ if environ is None else environ
    if env.get(SCHEMA_ENV):
        given = Path(env[SCHEMA_ENV])
        return given if given.is_file() else None
    for folder in SCHEMA_LOCATIONS:
        if (root / folder / SCHEMA_NAME).is_file():
            return root / folder / SCHEMA_NAME
    if ask_packages and (packaged := _packaged_schema()) is not None:
        return packaged
    for pattern in SCHEMA_GLOBS:
        for match in sorted(root.glob(pattern)):
            if (match / SCHEMA_NAME).is_file():
                return match / SCHEMA_NAME
    return None


@functools.cache
def schema_path() -> Path | None:
    """:func:`find_schema` for this machine, looked up once per process."""
    return find_schema()


def pdns_available() -> bool:
    """True when ``pdns_server`` and the SQLite backend's schema are installed."""
    return shutil.which(PDNS_BINARY) is not None and schema_path() is not None


def free_udp_tcp_port(host: str = LOOPBACK, attempts: int = 50) -> int:
    """A port free for both TCP and UDP (DNS listens on both with one number)."""
    for _ in range(attempts):
        port = free_port(host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no port free for both TCP and UDP on {host} after {attempts} tries")


def _config_text(data_dir: Path, api_key: str, api_port: int, dns_port: int) -> str:
    return "\n".join(
        [
            "launch=gsqlite3",
            f"gsqlite3-database={data_dir / 'pdns.sqlite3'}",
            "gsqlite3-dnssec=no",
            f"local-address={LOOPBACK}",
            f"local-port={dns_port}",
            f"socket-dir={data_dir}",
            "guardian=no",
            "daemon=no",
            "disable-syslog=yes",
            "loglevel=4",
            "api=yes",
            f"api-key={api_key}",
            "webserver=yes",
            f"webserver-address={LOOPBACK}",
            f"webserver-port={api_port}",
            "webserver-allow-from=127.0.0.0/8",
            "enable-lua-records=yes",
            # Without an empty suffix pdns tries an outbound security lookup at start.
            "security-poll-suffix=",
            # Without this the SOA is a placeholder.
            "default-soa-content=ns1.@ hostmaster.@ 0 10800 3600 604800 3600",
            "",
        ]
    )


class PdnsServer:
    """A pdns_server child process with its config and SQLite database in ``data_dir``.

    ``data_dir=None`` makes a temporary directory that ``stop()`` removes; a given
    directory is kept (``xplane up`` keeps its zones across restarts). Ports default
    to free loopback ports chosen at ``start()``.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        api_key: str | None = None,
        api_port: int | None = None,
        dns_port: int | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self._given_dir = Path(data_dir) if data_dir is not None else None
        self.data_dir: Path | None = self._given_dir
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.api_port = api_port
        self.dns_port = dns_port
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ props
    @property
    def api_url(self) -> str:
        if self.api_port is None:
            raise RuntimeError("PdnsServer is not started")
        return f"http://{LOOPBACK}:{self.api_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path:
        if self.data_dir is None:
            raise RuntimeError("PdnsServer is not started")
        return self.data_dir / "pdns.log"

    @property
    def pid_path(self) -> Path:
        if self.data_dir is None:
            raise RuntimeError("PdnsServer is not started")
        return self.data_dir / "pdns_server.pid"

    # -------------------------------------------------------------- lifecycle
    def start(self) -> PdnsServer:
        if self._process is not None:
            return self
        if not pdns_available():
            raise RuntimeError(
                f"{PDNS_BINARY} or its SQLite schema ({SCHEMA_NAME}) not installed: "
                f"install pdns-server and pdns-backend-sqlite3, or set {SCHEMA_ENV}"
            )
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="xplane-pdns-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.api_port = self.api_port or free_port(LOOPBACK)
        self.dns_port = self.dns_port or free_udp_tcp_port(LOOPBACK)
        self._init_database()
        conf = self.data_dir / "pdns.conf"
        # Created 0600 before the API key is written into it.
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(_config_text(self.data_dir, self.api_key, self.api_port, self.dns_port))
        with open(self.log_path, "ab") as log:
            # Own process group (a Ctrl-C of the parent doesn't hit it), killed by the
            # kernel if this process dies first; the pid file ("<pid> <start time>") lets
            # tooling, and the next `xplane up`, stop a server this process no longer holds.
            self._process = spawn(
                [PDNS_BINARY, f"--config-dir={self.data_dir}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pid_file=self.pid_path,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _init_database(self) -> None:
        assert self.data_dir is not None
        db = self.data_dir / "pdns.sqlite3"
        if db.exists():
            return
        schema = schema_path()
        assert schema is not None  # checked by start()
        with sqlite3.connect(db) as conn:
            conn.executescript(schema.read_text(encoding="utf-8"))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        url = f"{self.api_url}/api/v1/servers/localhost"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"pdns_server exited with {self._process.returncode}: {self._log_tail()}"
                )
            try:
                if httpx.get(url, headers=self.headers, timeout=1.0).status_code == 200:
                    with socket.create_connection((LOOPBACK, int(self.dns_port or 0)), 1.0):
                        return
            except (httpx.TransportError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(
            f"pdns_server API not ready after {self.start_timeout}s: {self._log_tail()}"
        )

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server by PID, SIGKILL if it has not exited after ``timeout``."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            try:
                os.kill(process.pid, signal.SIGTERM)
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(5)
            except ProcessLookupError:
                pass
        if process is not None and self.data_dir is not None:
            self.pid_path.unlink(missing_ok=True)
        if self._given_dir is None and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def __enter__(self) -> PdnsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------- zones
    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}

    def ensure_zone(self, zone: str, *, nameserver: str | None = None) -> None:
        """Create ``zone`` as a Native zone with SOA (default) and one NS, if it is missing."""
        name = zone.rstrip(".") + "."
        base = f"{self.api_url}/api/v1/servers/localhost/zones"
        with httpx.Client(headers=self.headers, timeout=10.0) as client:
            if client.get(f"{base}/{name}").status_code == 200:
                return
            body = {"name": name, "kind": "Native", "nameservers": [nameserver or f"ns1.{name}"]}
            response = client.post(base, json=body)
            if response.status_code not in (201, 409):
                raise RuntimeError(
                    f"pdns: creating zone {name} failed: {response.status_code} {response.text}"
                )
