"""Load a GitOps config tree (``gtm/``, ``autoscale/``, ``regions/``) into a ConfigTree.

Three passes, each collecting every problem instead of stopping at the first:

1. parse each YAML file, remembering the line of every key (for error messages);
2. validate each file against its model (``regions/`` files may be a group:
   ``defaults:`` merged into every entry of ``regions:``);
3. cross-file checks (unique region names and services, references to regions)
   and resolution (a GTM region's unset weight / min_ready_nodes /
   health_threshold come from its region).

Any problem raises one :class:`ConfigError` listing them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from xplane.config.errors import ConfigError, ConfigIssue, Loc, format_path, validation_errors
from xplane.config.models import (
    CONFIG_FILE_CONTEXT,
    AutoscalePolicy,
    ConfigTree,
    GtmPolicy,
    Region,
    RegionDefaults,
)

KINDS = ("regions", "gtm", "autoscale")
SUFFIXES = (".yaml", ".yml")
M = TypeVar("M", bound=BaseModel)


def load_config(root: Path) -> ConfigTree:
    """Load ``root/{regions,gtm,autoscale}/*.yaml|yml``. Missing folders are empty;
    other files (README.md, sub-folders) are ignored. Raises ConfigError."""
    files: dict[str, str] = {}
    unreadable: list[ConfigIssue] = []
    for kind in KINDS:
        folder = root / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            rel = f"{kind}/{path.name}"
            if not path.is_file() or not _is_config_file(rel):
                continue
            try:
                files[rel] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                unreadable.append(ConfigIssue(file=rel, message=f"cannot read file: {exc}"))
    return _load(files, unreadable)


def load_config_from_mapping(files: Mapping[str, str]) -> ConfigTree:
    """Like load_config, from ``{"gtm/svc-plus.yaml": text, ...}`` (paths relative, posix)."""
    return _load(files, [])


def _is_config_file(rel: str) -> bool:
    path = PurePosixPath(rel)
    return (
        len(path.parts) == 2
        and path.parts[0] in KINDS
        and path.suffix in SUFFIXES
        and not path.name.startswith(".")
    )


# ------------------------------------------------------------------ YAML + lines
@dataclass
class _Doc:
    """One parsed file: its data and the 1-based line of every key / list item."""

    file: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)

    def line(self, loc: Loc) -> int | None:
        """Line of the longest prefix of ``loc`` found in the file (best effort)."""
        for end in range(len(loc), 0, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None


class _Issues:
    """Collects issues; knows the line of a field through the parsed docs."""

    def __init__(self, initial: list[ConfigIssue]) -> None:
        self.items = list(initial)

    def add(self, doc: _Doc | str, loc: Loc, message: str) -> None:
        file, line = (doc, None) if isinstance(doc, str) else (doc.file, doc.line(loc))
        self.items.append(ConfigIssue(file=file, path=format_path(loc), message=message, line=line))

    def validate(self, model: type[M], data: Any, doc: _Doc, prefix: Loc = ()) -> M | None:
        try:
            return model.model_validate(data, context={CONFIG_FILE_CONTEXT: True})
        except ValidationError as exc:
            for loc, message in validation_errors(exc, data):
                self.add(doc, prefix + loc, message)
            return None


# Limits on one file's shape. A config is a few levels deep and a few hundred values;
# without limits a file nested thousands deep crashes the parser (RecursionError)
# and a few lines of aliases ("billion laughs") expand to billions of values.
MAX_DEPTH = 64
MAX_NODES = 100_000


class _TooComplex(Exception):
    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses nesting deeper than MAX_DEPTH while composing (the
    composer recurses once per level, so a deep file would exhaust the stack)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _TooComplex(
                    f"nested more than {MAX_DEPTH} levels deep", mark.line + 1 if mark else None
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _parse(file: str, text: str, issues: _Issues) -> _Doc | None:
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        doc = _Doc(file, None)
        if node is not None:
            # Before constructing: aliases are followed here, within the limits.
            _index_lines(node, (), doc, issues, _Budget())
            doc.data = loader.construct_document(node)
    except _TooComplex as exc:
        issues.items.append(ConfigIssue(file=file, message=f"invalid YAML: {exc}", line=exc.line))
        return None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = ": ".join(x for x in (exc.context, exc.problem) if x)
        line = mark.line + 1 if mark else None
        issues.items.append(ConfigIssue(file=file, message=f"invalid YAML: {what}", line=line))
        return None
    except yaml.YAMLError as exc:
        issues.items.append(ConfigIssue(file=file, message=f"invalid YAML: {exc}"))
        return None
    finally:
        loader.dispose()
    if doc.data is None:
        issues.add(doc, (), "file is empty: expected a mapping (key: value)")
        return None
    if not isinstance(doc.data, dict):
        names = {list: "a list", str: "a string", bool: "true/false", int: "a number"}
        kind = names.get(type(doc.data), "a single value")
        issues.add(doc, (), f"top level must be a mapping (key: value), not {kind}")
        return None
    return doc


@dataclass
class _Budget:
    """Values left to visit in one file, aliases expanded (MAX_NODES)."""

    left: int = MAX_NODES


def _index_lines(node: yaml.Node, loc: Loc, doc: _Doc, issues: _Issues, budget: _Budget) -> None:
    """Record the line of every key and list item; report duplicate keys (PyYAML
    silently keeps the last one, which would hide a mistake). Raises _TooComplex past
    MAX_DEPTH (an alias inside its own anchor never ends) or MAX_NODES."""
    budget.left -= 1
    line = node.start_mark.line + 1
    if budget.left < 0:
        raise _TooComplex(f"more than {MAX_NODES} values once aliases are expanded", line)
    if len(loc) > MAX_DEPTH:
        raise _TooComplex(f"nested more than {MAX_DEPTH} levels deep (through aliases)", line)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            sub = (*loc, key)
            if key in seen and key != "<<":
                line = key_node.start_mark.line + 1
                issues.items.append(
                    ConfigIssue(
                        file=doc.file, path=format_path(sub), message="duplicate key", line=line
                    )
                )
            seen.add(key)
            doc.lines.setdefault(sub, key_node.start_mark.line + 1)
            _index_lines(value_node, sub, doc, issues, budget)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            doc.lines[(*loc, i)] = item.start_mark.line + 1
            _index_lines(item, (*loc, i), doc, issues, budget)


# ---------------------------------------------------------------- per-file models
@dataclass
class _RegionEntry:
    region: Region | None  # None: invalid (already reported)
    name: str | None  # the declared name, even when invalid: avoids cascading errors
    doc: _Doc
    loc: Loc  # where the entry is: () for a one-region file, ("regions", i) in a group


def _region_entries(doc: _Doc, issues: _Issues) -> list[_RegionEntry]:
    data: dict[str, Any] = doc.data
    if "regions" not in data and "defaults" not in data:
        stem = PurePosixPath(doc.file).stem
        named = {"name": stem, **data}
        region = issues.validate(Region, named, doc)
        if region is None and "name" not in data:
            # A bad name taken from the file name: say so (there is no name: line to point at).
            for issue in issues.items:
                if issue.file == doc.file and issue.path == "name":
                    issue.message += " (taken from the file name; set name: to override)"
        return [_RegionEntry(region, named["name"], doc, ())]

    # A group: `defaults:` (optional) + `regions:` (list of regions).
    for key in data:
        if key not in ("defaults", "regions"):
            issues.add(doc, (key,), f"unknown field {key!r} (a region group has defaults, regions)")
    base: dict[str, Any] = {}
    if "defaults" in data and issues.validate(RegionDefaults, data["defaults"], doc, ("defaults",)):
        base = data["defaults"]
    items = data.get("regions")
    if not isinstance(items, list) or not items:
        issues.add(doc, ("regions",), "must be a non-empty list of regions")
        return []
    entries: list[_RegionEntry] = []
    for i, item in enumerate(items):
        loc: Loc = ("regions", i)
        if not isinstance(item, dict):
            issues.add(doc, loc, "must be a mapping (key: value)")
            continue
        merged = {**base, **item}  # entry fields win
        if isinstance(base.get("labels"), dict) and isinstance(item.get("labels"), dict):
            merged["labels"] = {**base["labels"], **item["labels"]}
        region = issues.validate(Region, merged, doc, loc)
        name = item.get("name")
        entries.append(_RegionEntry(region, name if isinstance(name, str) else None, doc, loc))
    return entries


# ------------------------------------------------------------------- the tree
def _load(files: Mapping[str, str], initial: list[ConfigIssue]) -> ConfigTree:
    issues = _Issues(initial)
    docs: dict[str, list[_Doc]] = {kind: [] for kind in KINDS}
    for rel in sorted(files):
        if _is_config_file(rel):
            doc = _parse(rel, files[rel], issues)
            if doc is not None:
                docs[PurePosixPath(rel).parts[0]].append(doc)

    regions, declared = _collect_regions(docs["regions"], issues)
    gtm = _collect_policies(GtmPolicy, "gtm", docs["gtm"], issues)
    autoscale = _collect_policies(AutoscalePolicy, "autoscale", docs["autoscale"], issues)

    _check_references(docs["gtm"], docs["autoscale"], declared, issues)
    if issues.items:
        raise ConfigError(issues.items)
    return ConfigTree(
        regions=regions,
        gtm={svc: _resolve_gtm(policy, regions) for svc, (policy, _) in gtm.items()},
        autoscale={svc: policy for svc, (policy, _) in autoscale.items()},
    )


def _collect_regions(docs: list[_Doc], issues: _Issues) -> tuple[dict[str, Region], set[str]]:
    """Valid regions by name, and every declared name (valid or not)."""
    regions: dict[str, Region] = {}
    first_seen: dict[str, str] = {}
    for doc in docs:
        for entry in _region_entries(doc, issues):
            if entry.name is None:
                continue
            if entry.name in first_seen:
                where = first_seen[entry.name]
                msg = f"region {entry.name!r} is already declared in {where}"
                issues.add(entry.doc, (*entry.loc, "name"), msg)
                continue
            first_seen[entry.name] = entry.doc.file
            if entry.region is not None:
                regions[entry.name] = entry.region
    return regions, set(first_seen)


def _collect_policies(
    model: type[M], kind: str, docs: list[_Doc], issues: _Issues
) -> dict[str, tuple[M, _Doc]]:
    """Valid policies by service; a service declared in two files is an error."""
    found: dict[str, tuple[M, _Doc]] = {}
    first_seen: dict[str, str] = {}
    for doc in docs:
        policy = issues.validate(model, doc.data, doc)
        service = doc.data.get("service")
        if not isinstance(service, str):
            continue
        if service in first_seen:
            article = "an" if kind[0] in "aeiou" else "a"
            msg = (
                f"service {service!r} already has {article} {kind} policy in {first_seen[service]}"
            )
            issues.add(doc, ("service",), msg)
            continue
        first_seen[service] = doc.file
        if policy is not None:
            found[service] = (policy, doc)
    return found


def _check_references(
    gtm: list[_Doc], autoscale: list[_Doc], declared: set[str], issues: _Issues
) -> None:
    """Every region a policy names is declared in regions/. Read from the raw data so
    it is reported even when the policy has other errors."""
    known = ", ".join(sorted(declared)) or "none"

    def check(doc: _Doc, name: Any, loc: Loc) -> None:
        if isinstance(name, str) and name not in declared:
            issues.add(doc, loc, f"unknown region {name!r}: not declared in regions/ ({known})")

    for doc in gtm:
        items = doc.data.get("regions")
        for i, item in enumerate(items if isinstance(items, list) else []):
            if isinstance(item, dict):
                check(doc, item.get("name"), ("regions", i, "name"))
    for doc in autoscale:
        items = doc.data.get("regions")
        for name in items if isinstance(items, dict) else {}:
            check(doc, name, ("regions", name))


def _resolve_gtm(policy: GtmPolicy, regions: dict[str, Region]) -> GtmPolicy:
    """Fill each GTM region's unset weight / min_ready_nodes / health_threshold."""
    resolved = [entry.resolved(regions[entry.name]) for entry in policy.regions]
    return policy.model_copy(update={"regions": resolved})
