"""Processes ``xplane up`` starts: spawned to die with it, recorded to be found again.

- :func:`spawn` starts a direct child with a parent-death signal (``PR_SET_PDEATHSIG``):
  the kernel kills it when ``xplane up`` dies, even by SIGKILL.
- Grandchildren started through git hooks, terraform and shell scripts outlive their
  intermediate parents, so they watch a *lifeline* instead: ``XPLANE_LIFELINE`` names
  the pid and start time of ``xplane up`` (:func:`lifeline_env`); :func:`lifeline_alive`
  says whether that process still runs.
- Pid files hold ``"<pid> <start time>"`` (the start time from ``/proc/<pid>/stat``), so a
  pid recycled by another process after a crash is never taken for ours
  (:func:`read_pid_file`, :func:`stop_pid_file`).
- :func:`port_holders` names the processes listening on a port (``/proc/net/*`` socket
  inodes matched against ``/proc/<pid>/fd``), for one-line "port in use" errors.
- :func:`without_secrets` is the environment a child gets: XPlane's secrets removed.

Linux only (``/proc``); elsewhere the checks degrade to "unknown" and nothing is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from xplane.observability.logging import SECRET_ENV_PREFIXES, SECRET_ENV_VARS

LIFELINE_ENV = "XPLANE_LIFELINE"
PR_SET_PDEATHSIG = 1

# XPlane's secrets (the same list the log redaction uses) plus the database URL, which
# may carry a password. The API and worker read them; no child process needs them:
# agents read the bootstrap token from a file, PowerDNS its key from its config, and the
# CI runner gets the webhook secret from its settings file.
CHILD_SECRET_VARS = frozenset({*SECRET_ENV_VARS, "XPLANE_DB_URL"})
CHILD_SECRET_PREFIXES = SECRET_ENV_PREFIXES


def without_secrets(
    environ: Mapping[str, str] | None = None, keep: Iterable[str] = ()
) -> dict[str, str]:
    """``environ`` (default: this process's) minus XPlane's secrets, except those in ``keep``."""
    env = os.environ if environ is None else environ
    kept = set(keep)
    return {
        k: v
        for k, v in env.items()
        if k in kept
        or not (k in CHILD_SECRET_VARS or any(k.startswith(p) for p in CHILD_SECRET_PREFIXES))
    }


# ------------------------------------------------------------------ process identity
def start_time(pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks after boot, field 22 of ``/proc/<pid>/stat``);
    None when there is no such process, or it is a zombie (it has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and ")"
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass(frozen=True)
class ProcRef:
    """One process, told apart from any later process that reuses its pid."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> ProcRef | None:
        started = start_time(pid)
        return None if started is None else cls(pid, started)

    @classmethod
    def parse(cls, text: str) -> ProcRef | None:
        """``"<pid> <start>"`` or ``"<pid>:<start>"``; None when malformed."""
        parts = text.replace(":", " ").split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            return None
        return cls(int(parts[0]), int(parts[1]))

    def alive(self) -> bool:
        return start_time(self.pid) == self.start

    def __str__(self) -> str:
        return f"{self.pid} {self.start}"


def describe(pid: int, width: int = 70) -> str:
    """``pid 123 (xplane up --data-dir ...)``, or just the pid when it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"pid {pid}"
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if argv:
        argv[0] = Path(argv[0]).name
        if len(argv) > 1 and argv[0].startswith("python"):
            argv = [argv[0], Path(argv[1]).name, *argv[2:]]  # "python3 xplane up ..."
    text = " ".join(" ".join(argv).split())  # one line, whatever the arguments hold
    if not text:
        return f"pid {pid}"
    return f"pid {pid} ({text[:width] + ('...' if len(text) > width else '')})"


# ---------------------------------------------------------------------- pid files
def write_pid_file(path: Path, pid: int) -> ProcRef | None:
    """Record ``pid`` with its start time; returns what was written (None: already gone)."""
    ref = ProcRef.of(pid)
    if ref is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{ref}\n")
    return ref


def read_pid_file(path: Path) -> ProcRef | None:
    """The process a pid file names, if it still runs (same pid *and* start time)."""
    try:
        ref = ProcRef.parse(path.read_text())
    except OSError:
        return None
    return ref if ref is not None and ref.alive() else None


def stop(refs: Sequence[ProcRef], timeout: float = 5.0, group: bool = False) -> int:
    """SIGTERM each process (its process group when ``group``), SIGKILL what is left after
    ``timeout``; returns how many were running. Only live, identical processes are hit."""

    def signal_all(targets: Iterable[ProcRef], sig: int) -> None:
        for ref in targets:
            if not ref.alive():  # checked right before the kill: never a recycled pid
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if group and os.getpgid(ref.pid) == ref.pid:
                    os.killpg(ref.pid, sig)
                else:
                    os.kill(ref.pid, sig)

    running = [r for r in refs if r.alive()]
    signal_all(running, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    left = running
    while left and time.monotonic() < deadline:
        for ref in left:  # reap our own children, or they stay zombies
            with contextlib.suppress(ChildProcessError):
                os.waitpid(ref.pid, os.WNOHANG)
        left = [r for r in left if r.alive()]
        if left:
            time.sleep(0.05)
    signal_all(left, signal.SIGKILL)
    return len(running)


def stop_pid_file(path: Path, timeout: float = 5.0, group: bool = False) -> int:
    """Stop the process a pid file names (if it still is that process); remove the file."""
    ref = read_pid_file(path)
    count = stop([ref], timeout, group) if ref else 0
    path.unlink(missing_ok=True)
    return count


# ------------------------------------------------------------ parent-death signal
_libc: Any = None


def _prctl() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc.prctl


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn``: the child gets ``sig`` when this process dies, however it dies.

    The kernel sends it when the forking *thread* ends, so only the main thread arms it
    (None elsewhere: a child of a short-lived thread must not die with that thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()
    prctl = _prctl()  # loaded here: nothing but a C call happens between fork and exec

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return preexec


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    pid_file: Path | None = None,
    new_session: bool = True,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """Start a child that dies with this process; its environment has no secrets unless
    ``env`` is given; with ``pid_file`` it is recorded for the next run to find."""
    proc = subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else without_secrets(),
        preexec_fn=die_with_parent(),
        start_new_session=new_session,  # a Ctrl-C of the terminal reaches only us
        **popen,
    )
    if pid_file is not None:
        write_pid_file(pid_file, proc.pid)
    return proc


# ---------------------------------------------------------------------- lifeline
def lifeline_env() -> dict[str, str]:
    """``XPLANE_LIFELINE`` naming this process: descendants that see it gone exit."""
    ref = ProcRef.of(os.getpid())
    return {LIFELINE_ENV: f"{ref.pid}:{ref.start}"} if ref else {}


def lifeline(environ: Mapping[str, str] | None = None) -> ProcRef | None:
    """The process this one must not outlive (None: no lifeline, or a malformed one)."""
    value = (os.environ if environ is None else environ).get(LIFELINE_ENV, "")
    return ProcRef.parse(value) if value else None


def lifeline_alive(environ: Mapping[str, str] | None = None) -> bool:
    """False only when a lifeline is set and its process is gone."""
    ref = lifeline(environ)
    return ref is None or ref.alive()


# ------------------------------------------------------------------------- ports
Proto = Literal["tcp", "udp"]
_LISTEN = {"tcp": "0A", "udp": "07"}  # TCP_LISTEN; UDP sockets bound, unconnected


def _socket_inodes(port: int, proto: Proto) -> set[str]:
    inodes: set[str] = set()
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN[proto]:
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] != "0":
                inodes.add(fields[9])
    return inodes


def port_holders(port: int, proto: Proto = "tcp") -> list[int]:
    """Pids with a socket listening on ``port`` (only the processes this user can see)."""
    wanted = {f"socket:[{inode}]" for inode in _socket_inodes(port, proto)}
    holders: list[int] = []
    if not wanted:
        return holders
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(fd) in wanted:
                    holders.append(int(proc.name))
                    break
    return sorted(holders)


def port_free(port: int, host: str = "127.0.0.1", proto: Proto = "tcp") -> bool:
    """Whether a server could bind ``host:port`` now (as servers do, with SO_REUSEADDR)."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


@dataclass(frozen=True)
class PortNeed:
    """A port ``xplane up`` will listen on, and the flag that changes it."""

    port: int
    what: str
    flag: str
    host: str = "127.0.0.1"
    protos: tuple[Proto, ...] = ("tcp",)


class PortBusy(Exception):
    """A port is in use; the message is one line for the user."""


def busy_message(need: PortNeed, proto: Proto) -> str:
    holders = port_holders(need.port, proto)
    who = (
        ", ".join(describe(pid) for pid in holders)
        if holders
        else "a process this user cannot see (try `ss -lntup`)"
    )
    return (
        f"port {need.port}/{proto} ({need.what}) is in use by {who}; "
        f"stop it or choose another port with {need.flag} (0 = any free port)"
    )


def check_ports(needs: Iterable[PortNeed]) -> None:
    """Raise :class:`PortBusy` for the first port that cannot be bound."""
    for need in needs:
        if need.port == 0:
            continue
        for proto in need.protos:
            if not port_free(need.port, need.host, proto):
                raise PortBusy(busy_message(need, proto))
