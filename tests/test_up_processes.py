"""`xplane up` on a real laptop: busy ports, leftovers, SIGKILL, secrets, local CPU.

- A port in use is a one-line error naming the port, its holder and the flag.
- Pid files a killed run left are followed only to the very process (pid + start time):
  a leftover is stopped, a process that merely reuses its pid is not.
- After a SIGKILL of `xplane up`, within 10 s nothing it started runs and its ports are
  free (parent-death signal for its children, XPLANE_LIFELINE for the agents).
- Its children's environments hold none of its secrets (/proc/<pid>/environ).
- A local pool's agent reports the pool's metrics file's CPU (30% by default), not the
  machine's, however busy the machine is.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import git
import pytest

from tests.support.stack import BIN, Stack, kill_leftover_agents, wait_for
from tests.support.tools import needs_tool
from tests.support.waiting import until
from tests.test_infra_support import ControlPlane, start_control_plane, unique_prefix
from xplane.infra.local_runner import install_hook
from xplane.infra.skeleton import INFRA_ROOT
from xplane.netutil import free_port

XPLANE = str(BIN / "xplane")


# ----------------------------------------------------------------- /proc, by hand
def started(pid: int) -> int | None:
    """Start time of a live (non-zombie) pid, read here independently of xplane.procs."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def running(ref: tuple[int, int]) -> bool:
    return started(ref[0]) == ref[1]


def ref_of(pid: int) -> tuple[int, int]:
    start = started(pid)
    assert start is not None, f"pid {pid} is not running"
    return (pid, start)


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().partition("=")[::2] for item in raw.split(b"\0") if item)


def children_of(pid: int) -> set[int]:
    """Every live descendant of ``pid``."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parents[int(proc.name)] = int(
                    (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def with_env(name: str, value: str) -> set[int]:
    """Live processes of this user whose environment has ``name=value``."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, UnicodeDecodeError):
                if environ(int(proc.name)).get(name) == value:
                    pids.add(int(proc.name))
    return pids


def listening_ports(pids: set[int]) -> set[tuple[str, int]]:
    """(proto, port) of the listening sockets the given processes hold."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    return {(proto, port) for proto, port, inode in _listeners() if inode in inodes}


def _listeners() -> list[tuple[str, int, str]]:
    rows = []
    for proto, state in (("tcp", "0A"), ("udp", "07")):
        for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == state:
                    rows.append((proto, int(f[1].rsplit(":", 1)[1], 16), f[9]))
    return rows


def still_listening(ports: set[tuple[str, int]]) -> set[tuple[str, int]]:
    return {(proto, port) for proto, port, _ in _listeners()} & ports


# ---------------------------------------------------------------------- helpers
HOLDER = """import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
if sys.argv[1] == "tcp":
    s.listen()
print(s.getsockname()[1], flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def holder(tmp: Path, name: str, proto: str = "tcp") -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Another program holding a loopback port (a separate process, as on a laptop)."""
    script = tmp / f"{name}.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), proto], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc, int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


def up(data_dir: Path, *flags: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`xplane up` expected to refuse to start (so it returns by itself)."""
    ports = {"--temporal-port": "0", "--ui-port": "0", "--api-port": "0",
             "--pdns-api-port": str(free_port()), "--dns-port": str(free_port()),
             "--node-health-port": "0"}  # fmt: skip
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        ports[flag] = value
    argv = [XPLANE, "up", "--data-dir", str(data_dir)]
    for flag, value in ports.items():
        argv += [flag, value]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


# ------------------------------------------------------------------ busy ports
def test_a_busy_port_is_one_line_naming_the_port_its_holder_and_the_flag(
    tmp_path: Path,
) -> None:
    with holder(tmp_path, "squatter") as (proc, port):
        done = up(tmp_path / "data", "--api-port", str(port))
    line = assert_one_line_error(done)
    assert f"port {port}/tcp (XPlane API)" in line
    assert f"pid {proc.pid} (" in line and "squatter.py tcp" in line
    assert "--api-port" in line
    assert not (tmp_path / "data" / "temporal").exists()  # refused before starting anything


@needs_tool("pdns_server")
def test_a_busy_udp_dns_port_names_the_dns_flag(tmp_path: Path) -> None:
    with holder(tmp_path, "dns-squatter", "udp") as (proc, port):
        done = up(tmp_path / "data", "--dns-port", str(port))
    line = assert_one_line_error(done)
    assert f"port {port}/udp (PowerDNS DNS)" in line and f"pid {proc.pid}" in line
    assert "--dns-port" in line


# ------------------------------------------------------------------- leftovers
def test_leftovers_of_a_killed_up_are_stopped_and_a_recycled_pid_is_spared(
    tmp_path: Path,
) -> None:
    """A killed run left a Temporal server (its pid file, with the start time) holding the
    Temporal port; a stale agent pid file now names another program (same pid number, later
    start time). The next `xplane up` stops the first and leaves the second alone, so its
    port stays busy and is reported."""
    data = tmp_path / "data"
    with (
        holder(tmp_path, "leftover") as (leftover, temporal_port),
        holder(tmp_path, "innocent") as (innocent, api_port),
    ):
        pid_file = data / "temporal" / "temporal.pid"
        pid_file.parent.mkdir(parents=True)
        pid, start = ref_of(leftover.pid)
        pid_file.write_text(f"{pid} {start}\n")
        (data / "pool").mkdir()
        pid, start = ref_of(innocent.pid)
        (data / "pool" / "jp-0.pid").write_text(f"{pid} {start - 1}\n")  # a recycled pid

        done = up(data, "--temporal-port", str(temporal_port), "--api-port", str(api_port))
        line = assert_one_line_error(done)
        assert "stopped 1 process(es) left running by an earlier `xplane up`" in done.stdout
        assert leftover.wait(timeout=5) == -signal.SIGTERM
        assert innocent.poll() is None
        assert f"port {api_port}/tcp (XPlane API)" in line and f"pid {innocent.pid}" in line
        assert not pid_file.exists()


def test_a_second_up_on_a_running_data_directory_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    pid, start = ref_of(os.getpid())  # this test stands for the running `xplane up`
    (data / "up.pid").write_text(f"{pid} {start}\n")
    line = assert_one_line_error(up(data))
    assert f"xplane up is already running for {data} (pid {pid}" in line
    assert running((pid, start))


# ----------------------------------------------------------------- local CPU
def test_a_local_pool_agent_reports_the_metrics_file_cpu_not_the_busy_machines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XPLANE_HEARTBEAT_INTERVAL", "0.5")
    plane: ControlPlane = start_control_plane(tmp_path)
    state_dir = tmp_path / "pool"
    prefix, port = unique_prefix(), free_port()
    env = {
        **os.environ,
        "AGENT_COMMAND": XPLANE,
        "API_URL": plane.url,
        "SERVICE": "svc-plus",
        "REGION": "jp",
        "NODE_ID": "jp-0",
        "ADDRESS": f"{prefix}.10",
        "HEALTH_PORT": str(port),
        "TOKEN_FILE": str(plane.token_file),
        "STATE_DIR": str(state_dir),
        "PID_FILE": str(state_dir / "jp-0.pid"),
    }
    # The machine is busy: every core spins.
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        script = INFRA_ROOT / "node-pool" / "modules" / "local" / "start.sh"
        done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr

        def cpu() -> float | None:
            nodes = [n for n in plane.nodes() if n["id"] == "jp-0"]
            return nodes[0].get("cpu") if nodes else None

        until(lambda: cpu() is not None, "jp-0 heartbeating", 60)
        time.sleep(2)  # a few more heartbeats (every 0.5 s), all on a busy machine
        assert cpu() == pytest.approx(0.3)  # the pool's default
        metrics = state_dir / "jp.metrics.json"
        metrics.write_text(json.dumps({"cpu": 0.95}))  # `xplane demo load jp`
        until(lambda: cpu() == pytest.approx(0.95), "the file's CPU", 30)
        metrics.write_text("{}")  # `xplane demo load jp --stop`
        until(lambda: cpu() == pytest.approx(0.3), "back to the default", 30)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
        kill_leftover_agents_in(state_dir)
        plane.stop()


def kill_leftover_agents_in(state_dir: Path) -> None:
    from xplane.up import stop_pool_agents

    stop_pool_agents(state_dir)


# ------------------------------------------------------------ CI worker lifeline
def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def test_a_ci_worker_ends_itself_and_its_terraform_once_up_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker a push starts (git hook, new session) is no child of `xplane up`: it
    watches XPLANE_LIFELINE and takes its terraform down with it."""
    bare = tmp_path / "infra.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    terraform = tmp_path / "terraform"
    terraform.write_text("#!/bin/sh\nexec sleep 600\n")  # an apply that takes long
    terraform.chmod(0o755)
    refs: set[tuple[int, int]] = set()
    with holder(tmp_path, "fake-up") as (fake_up, _):
        lifeline = "{}:{}".format(*ref_of(fake_up.pid))
        monkeypatch.setenv("XPLANE_LIFELINE", lifeline)  # as `xplane up` sets it
        install_hook(bare, {"TERRAFORM": str(terraform)}, work_dir=tmp_path / "runner")
        clone = git.Repo.clone_from(str(bare), tmp_path / "clone")
        pool = Path(str(clone.working_tree_dir)) / "infra" / "node-pool"
        (pool / "jp").mkdir(parents=True)
        (pool / "jp" / "main.tf").write_text("")
        (pool / "jp.tfvars").write_text('service = "svc-plus"\n')
        clone.git.add(A=True)
        clone.index.commit("jp pool")
        clone.git.push("origin", "HEAD:refs/heads/main")
        try:

            def worker_and_terraform() -> set[int] | None:
                lines = {pid: cmdline(pid) for pid in with_env("XPLANE_LIFELINE", lifeline)}
                worker = {p for p, c in lines.items() if "local_runner run" in c}
                tf = {p for p, c in lines.items() if c.startswith("sleep 600")}
                return worker | tf if worker and tf else None

            pids = until(worker_and_terraform, "the worker running terraform", 60)
            refs = {ref_of(pid) for pid in pids if started(pid) is not None}
            fake_up.kill()
            fake_up.wait()
            until(lambda: not any(map(running, refs)), "worker and terraform gone", 5, every=0.1)
        finally:
            for pid, _ in [ref for ref in refs if running(ref)]:
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------- a real `xplane up`, killed
@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.stop()
        kill_leftover_agents(s)
        print(s.output()[-3000:])


@pytest.mark.slow
@needs_tool("pdns_server", "terraform")
def test_sigkill_of_up_leaves_nothing_running_and_children_had_no_secrets(
    stack: Stack,
) -> None:
    wait_for("XPlane is up", lambda: "XPlane is up" in stack.output(), 180)
    info = stack.info()
    up_pid = stack.proc.pid
    pool = stack.data / "pool"

    def agents() -> set[int]:
        pids = {int(p.read_text().split()[0]) for p in pool.glob("*.pid")}
        return {pid for pid in pids if started(pid) is not None}

    wait_for("node agents running", lambda: len(agents()) >= 2, 180)
    pdns_pid = int((stack.data / "pdns" / "pdns_server.pid").read_text().split()[0])
    long_lived = {"temporal": {info["temporal_pid"]}, "pdns": {pdns_pid}, "agents": agents()}

    # Secrets: none of `xplane up`'s secrets is in a child's environment.
    secrets = {p.name: p.read_text().strip() for p in (stack.data / "secrets").iterdir()}
    assert set(secrets) >= {"admin.token", "webhook.secret", "bootstrap.token", "pdns-api.key"}
    for what, pids in long_lived.items():
        for pid in pids:
            env = environ(pid)
            leaked = [name for name, value in secrets.items() if value in env.values()]
            assert not leaked, f"{what} (pid {pid}) has {leaked} in its environment"
            assert not {"XPLANE_ADMIN_TOKEN", "XPLANE_WEBHOOK_SECRET"} & set(env), what

    # Everything it started, and the ports they listen on.
    lifeline = environ(long_lived["agents"].pop())["XPLANE_LIFELINE"]
    assert lifeline == f"{up_pid}:{started(up_pid)}"
    pids = children_of(up_pid) | with_env("XPLANE_LIFELINE", lifeline) | agents()
    pids |= long_lived["temporal"] | long_lived["pdns"]
    refs = {ref_of(pid) for pid in pids if started(pid) is not None}
    ports = listening_ports(pids | {up_pid})
    host_port = lambda url: int(url.rsplit(":", 1)[1])  # noqa: E731
    expected = {("tcp", host_port(info["temporal_address"])), ("tcp", host_port(info["api_url"])),
                ("tcp", host_port(info["temporal_ui"])), ("tcp", stack.pdns_api),
                ("udp", stack.dns_port), ("tcp", stack.dns_port)}  # fmt: skip
    assert expected <= ports, (expected, ports)

    os.kill(up_pid, signal.SIGKILL)
    stack.proc.wait()
    killed_at = time.monotonic()
    try:
        wait_for(
            "every process gone, every port free",
            lambda: not any(map(running, refs)) and not still_listening(ports),
            10,
            every=0.2,
        )
    finally:
        left = [ref for ref in refs if running(ref)]
        print(f"gone after {time.monotonic() - killed_at:.1f}s; left: {left}")
        for pid, _ in left:  # whatever failed the test still must not outlive it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
