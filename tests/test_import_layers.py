"""Layers point one way: every module's imports, read with ``ast``, against the rules.

::

    edges (CLI, API, ``xplane up``, the Temporal edge) and the worker: assemble everything
      workflows  -> core; activities (by reference, and their request/result types)
      activities -> adapters, core
      adapters   -> core (the store lowest of them: it imports no other adapter)
      core       -> nothing but the core: no I/O library, no adapter

The rules (issue 12): core -> no I/O and no adapters; adapters -> no activities,
workflows or workers; activities -> no workflows; the ``xplane`` package -> no
top-level ``workflows``/``activities``/``workers`` outside the edges. Every module
must belong to exactly one layer, so a new one is placed deliberately.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("xplane", "activities", "workflows", "workers")

# The pure core: rules and the types they speak. Shared ids and messages live here so
# activities and workflows (and the edges) import them without an upward arrow.
CORE = (
    "xplane.auth.roles",  # who may do what: roles, scopes, grants (pure)
    "xplane.autoscale",
    "xplane.config",
    "xplane.domain",
    "xplane.durations",
    "xplane.gate",
    "xplane.gtm",
    "xplane.heartbeat",
    "xplane.ids",
    "xplane.lifecycle",
    "xplane.messages",
    "xplane.schedules",  # what Temporal Schedule each configured window is (pure specs)
    "xplane.windows",  # when a cron/fixed window is open
    # The DNS plan every provider shares (records, diff, ownership, safety threshold):
    # pure, so the core (deadband, last-good) and workflows may speak it.
    "xplane.dns.plan",
)
# I/O behind a plain interface: databases, DNS APIs, git, Terraform, HTTP, processes.
ADAPTERS = (
    "xplane.auth",  # identities: OIDC token verification (JWKS over HTTP), the audit trail
    "xplane.dns",
    "xplane.filelock",
    "xplane.gitops",
    "xplane.infra",
    "xplane.localrepo",
    "xplane.netutil",
    "xplane.observability",
    "xplane.probes",
    "xplane.procs",
    "xplane.settings",
    "xplane.store",
    "xplane.webhooks",
    # The Temporal connection itself (client, TLS/API key, the dev server): no workflow.
    "xplane.temporal.client",
    "xplane.temporal.dev",
    "xplane.temporal.security",
)
# Process-level helpers (a file lock, free ports, child processes): any adapter may use them.
OS_HELPERS = ("xplane.filelock", "xplane.netutil", "xplane.procs")
# What assembles the layers for a user; only these may import workflows/activities/workers.
EDGES = (
    "xplane.agent",  # a program of its own on every node (it imports no workflow)
    "xplane.api",
    "xplane.cli",
    "xplane.status",  # `xplane status`: the store's view plus the loops' status queries
    "xplane.status_view",
    "xplane.up",
    # The Temporal edge: what starts, signals and runs workflows by reference.
    "xplane.temporal",
)
LAYERS = {
    "core": CORE,
    "adapter": ADAPTERS,
    "edge": EDGES,
    "activities": ("activities",),
    "workflows": ("workflows",),
    "worker": ("workers",),
}
# Libraries that reach outside the process (or the Temporal client/worker): never in the core.
IO_LIBRARIES = (
    "aiohttp",
    "alembic",
    "asyncio",
    "boto3",
    "botocore",
    "cloudflare",
    "ctypes",
    "dns",
    "fastapi",
    "fcntl",
    "git",
    "http.client",
    "httpx",
    "opentelemetry",
    "prometheus_client",
    "psycopg",
    "requests",
    "socket",
    "sqlalchemy",
    "sqlite3",
    "starlette",
    "subprocess",
    "temporalio",  # but temporalio.common (below): search attribute keys are plain values
    "urllib.request",
    "uvicorn",
)
CORE_MAY_USE = ("temporalio.common",)

# Arrows other helpers of issue 12 are removing; each goes when its fix is merged.
# (importer, imported): the importer module (or package prefix) and the imported prefix.
PENDING: dict[tuple[str, str], str] = {}

Arrow = tuple[str, str, int]  # (importer, imported, line)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = modules()


def imports_of(name: str, path: Path) -> Iterator[Arrow]:
    """Every module (and every name of a module) ``name`` imports, anywhere in the file:
    functions, ``TYPE_CHECKING`` and sandbox pass-through blocks included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield name, alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from xplane import store` is xplane.store
                yield name, f"{base}.{alias.name}", node.lineno


ARROWS = [arrow for name, path in MODULES.items() for arrow in imports_of(name, path)]


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer_of(module: str) -> str | None:
    """The layer of the longest prefix that names the module."""
    best: tuple[int, str] | None = None
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            if within(module, (prefix,)) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), layer)
    return best[1] if best else None


def internal_layer(imported: str) -> str | None:
    return layer_of(imported) if imported.split(".")[0] in PACKAGES else None


def top_level_functions(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    kinds = ast.FunctionDef | ast.AsyncFunctionDef
    return {f"{module}.{n.name}" for n in tree.body if isinstance(n, kinds)}


ACTIVITY_FUNCTIONS = {
    f for m in MODULES if layer_of(m) == "activities" for f in top_level_functions(m)
}


# ------------------------------------------------------------------------- rules
def core_imports_io_or_adapter(importer: str, imported: str) -> bool:
    if layer_of(importer) != "core" or within(imported, CORE_MAY_USE):
        return False
    return within(imported, IO_LIBRARIES) or internal_layer(imported) not in (None, "core")


def adapter_imports_upward(importer: str, imported: str) -> bool:
    upward = ("activities", "workflows", "worker", "edge")
    return layer_of(importer) == "adapter" and internal_layer(imported) in upward


def store_imports_another_adapter(importer: str, imported: str) -> bool:
    """The store is the lowest adapter: the webhook outbox and the API's writer use it."""
    return (
        within(importer, ("xplane.store",))
        and internal_layer(imported) == "adapter"
        and not within(imported, ("xplane.store", *OS_HELPERS))
    )


def activity_imports_workflow(importer: str, imported: str) -> bool:
    upward = ("workflows", "worker", "edge")
    return layer_of(importer) == "activities" and internal_layer(imported) in upward


def workflow_imports_adapter_worker_or_edge(importer: str, imported: str) -> bool:
    """Workflows reach I/O only by calling activities."""
    outside = ("adapter", "worker", "edge")
    return layer_of(importer) == "workflows" and internal_layer(imported) in outside


def workflow_takes_rule_from_activity(importer: str, imported: str) -> bool:
    """From activities a workflow takes activities and their request/result types, never
    a function: the rules workflow code runs live in the core."""
    return layer_of(importer) == "workflows" and imported in ACTIVITY_FUNCTIONS


def xplane_imports_top_level_outside_edges(importer: str, imported: str) -> bool:
    return (
        within(importer, ("xplane",))
        and layer_of(importer) != "edge"
        and within(imported, ("workflows", "activities", "workers"))
    )


RULES = [
    core_imports_io_or_adapter,
    adapter_imports_upward,
    store_imports_another_adapter,
    activity_imports_workflow,
    workflow_imports_adapter_worker_or_edge,
    workflow_takes_rule_from_activity,
    xplane_imports_top_level_outside_edges,
]


def pending(importer: str, imported: str) -> bool:
    return any(within(importer, (src,)) and within(imported, (dst,)) for src, dst in PENDING)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_no_arrow_against_the_layers(rule: Callable[[str, str], bool]) -> None:
    wrong = [
        f"{MODULES[importer].relative_to(ROOT)}:{line}: {importer} imports {imported}"
        for importer, imported, line in ARROWS
        if rule(importer, imported) and not pending(importer, imported)
    ]
    assert not wrong, f"{rule.__name__}:\n" + "\n".join(wrong)


def test_every_module_is_in_one_layer() -> None:
    unplaced = [m for m in MODULES if m != "xplane" and layer_of(m) is None]
    assert not unplaced, f"place these modules in a layer of {__name__}: {unplaced}"


@pytest.mark.parametrize("arrow", sorted(PENDING), ids=lambda a: f"{a[0]}->{a[1]}")
def test_each_pending_exception_is_still_needed(arrow: tuple[str, str]) -> None:
    """An exception whose arrow is gone (or no longer breaks a rule) leaves the list."""
    src, dst = arrow
    assert any(
        within(importer, (src,)) and within(imported, (dst,)) and rule(importer, imported)
        for importer, imported, _ in ARROWS
        for rule in RULES
    ), f"{src} -> {dst} breaks no rule any more: remove it from PENDING"


# Temporal calls that take a workflow, activity, signal or query: by reference, never a
# string literal, so a misspelt name fails at type-check time (temporalio/samples-python).
BY_REFERENCE = {
    "execute_activity",
    "start_activity",
    "execute_child_workflow",
    "start_child_workflow",
    "execute_workflow",
    "start_workflow",
    "signal",
    "query",
}
BY_REFERENCE_KEYWORDS = {"signal", "start_signal", "workflow_type"}


def test_temporal_is_called_by_reference() -> None:
    wrong = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        if path.relative_to(ROOT).parts[0] not in (*PACKAGES, "tests", "bench"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            named = [kw.value for kw in node.keywords if kw.arg in BY_REFERENCE_KEYWORDS]
            if node.func.attr in BY_REFERENCE and node.args:
                named.append(node.args[0])
            wrong += [
                f"{path.relative_to(ROOT)}:{node.lineno}: {node.func.attr}({arg.value!r}, ...)"
                for arg in named
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            ]
    assert not wrong, "by name, not by reference:\n" + "\n".join(wrong)
