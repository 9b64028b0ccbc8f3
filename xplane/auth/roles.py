"""Roles, scopes and who may do what: pure rules, no I/O.

Three roles, each including the one before: ``viewer`` reads everything but
secrets, ``operator`` also runs day-to-day operations (drain and undrain nodes,
pause and resume loops, retry a region, trigger a sync, open and close the gate),
``admin`` may do everything (API tokens, approving a held DNS plan, retiring a
region, manual scale commits).

A grant is a role, optionally limited to one service or one service's region
(``operator`` on ``svc-plus/jp``). An identity holds one or more grants; an
action on a target is allowed when one grant's role carries the permission and
its scope covers the target. An action without a service (a sync, a token) is
only covered by an unscoped grant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum


class Role(IntEnum):
    """Ordered: a higher role holds every permission of a lower one."""

    viewer = 1
    operator = 2
    admin = 3


class Permission(StrEnum):
    read = "read"  # every read but secrets
    operate = "operate"  # the operator's actions
    admin = "admin"  # tokens, approvals, retirements, manual scale commits


_MINIMUM_ROLE = {Permission.read: Role.viewer, Permission.operate: Role.operator}


def role_named(name: str) -> Role:
    """``"operator"`` -> :attr:`Role.operator`; ValueError naming the choices."""
    try:
        return Role[name.strip().lower()]
    except KeyError:
        choices = ", ".join(r.name for r in Role)
        raise ValueError(f"unknown role {name!r} (one of {choices})") from None


_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_SCOPE = re.compile(rf"^({_NAME})(?:/({_NAME}))?$")


@dataclass(frozen=True)
class Scope:
    """One service, or one region of one service."""

    service: str
    region: str | None = None

    @classmethod
    def parse(cls, text: str) -> Scope:
        """``svc-plus`` or ``svc-plus/jp``; ValueError otherwise."""
        match = _SCOPE.match(text.strip())
        if match is None:
            raise ValueError(f"scope {text!r} is not SERVICE or SERVICE/REGION")
        return cls(match.group(1), match.group(2))

    def __str__(self) -> str:
        return self.service if self.region is None else f"{self.service}/{self.region}"

    def covers(self, target: Target) -> bool:
        if target.service != self.service:
            return False
        return self.region is None or target.region == self.region


@dataclass(frozen=True)
class Target:
    """What an action touches: a service, a region of it, a node (all optional)."""

    service: str | None = None
    region: str | None = None
    node_id: str | None = None
    name: str | None = None  # any other named thing (a token, a loop)

    def describe(self) -> str:
        parts = [p for p in (self.service, self.region, self.node_id, self.name) if p]
        return "/".join(parts) or "-"


@dataclass(frozen=True)
class Grant:
    role: Role
    scope: Scope | None = None  # None: every service and region

    def __str__(self) -> str:
        return self.role.name if self.scope is None else f"{self.role.name}@{self.scope}"

    def permits(self, permission: Permission) -> bool:
        return self.role >= _MINIMUM_ROLE.get(permission, Role.admin)

    def covers(self, target: Target) -> bool:
        return self.scope is None or self.scope.covers(target)


@dataclass(frozen=True)
class Identity:
    """Who is calling: how they proved it (``kind``), who they are, what they hold."""

    kind: str  # oidc | api-token | admin-token
    subject: str  # the OIDC ``sub``, or the token's name
    name: str  # what people read in the audit log
    grants: tuple[Grant, ...] = field(default_factory=tuple)

    @property
    def role(self) -> str:
        """The grants, as the audit log shows them (``operator@svc-plus/jp``)."""
        return ",".join(str(g) for g in self.grants) or "none"

    def allows(self, permission: Permission, target: Target) -> bool:
        return any(g.permits(permission) and g.covers(target) for g in self.grants)

    def sees(self, service: str, region: str | None = None) -> bool:
        """Whether reads may show this service (and region)."""
        return self.allows(Permission.read, Target(service=service, region=region))

    @property
    def unrestricted_reader(self) -> bool:
        return any(g.permits(Permission.read) and g.scope is None for g in self.grants)


def parse_grant(text: str) -> Grant:
    """``operator`` or ``operator@svc-plus/jp``."""
    role, _, scope = text.partition("@")
    return Grant(role_named(role), Scope.parse(scope) if scope else None)


DEFAULT_ROLE_MAP: dict[str, tuple[Grant, ...]] = {r.name: (Grant(r),) for r in Role}


def parse_role_map(text: str) -> dict[str, tuple[Grant, ...]]:
    """``"idp-role=xplane-role[@service[/region]],..."`` over the defaults (viewer,
    operator and admin map to themselves). A key may repeat: its grants add up."""
    mapping: dict[str, list[Grant]] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        key, sep, value = entry.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"role map entry {entry!r} is not IDP_ROLE=ROLE[@SCOPE]")
        mapping.setdefault(key.strip(), []).append(parse_grant(value))
    return {**DEFAULT_ROLE_MAP, **{k: tuple(v) for k, v in mapping.items()}}


def claim_names(claims: dict[str, object], roles_claim: str = "roles") -> list[str]:
    """Role and group names in ``claims``: ``roles_claim`` (strings, or objects with a
    ``name`` as Casdoor writes them) and ``groups``."""
    names: list[str] = []
    for claim in dict.fromkeys((roles_claim, "groups")):
        value = claims.get(claim)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            continue
        for item in value:
            if isinstance(item, dict):
                item = item.get("name")
            if isinstance(item, str) and item:
                names.append(item)
    return names


def grants_for(names: list[str], role_map: dict[str, tuple[Grant, ...]]) -> tuple[Grant, ...]:
    """The grants the identity provider's role and group names map to (deduplicated)."""
    found: dict[Grant, None] = {}
    for name in names:
        for grant in role_map.get(name, ()):
            found[grant] = None
    return tuple(found)
