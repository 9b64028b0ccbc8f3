"""Render a region's node pool as Terraform files (pure: text in, text out).

Per region the infra repo holds a root module ``infra/node-pool/<region>/`` (``main.tf``
calling ``infra/node-pool/modules/<provider>``, ``variables.tf``) and the values file
``infra/node-pool/<region>.tfvars`` the autoscaler edits (``node_count``). Secrets and
machine-specific paths (API URL, bootstrap token, state dir) are never rendered: CI
passes them as ``TF_VAR_*``. Every file is ``terraform fmt`` clean.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from xplane.config.models import ConfigTree, Region

NODE_POOL_DIR = "infra/node-pool"
STATE_FILE = "terraform.tfstate"


class RenderError(ValueError):
    """The region cannot be rendered (unknown provider, missing field, bad extra var)."""


@dataclass(frozen=True)
class Var:
    """One input variable of the root module, passed on to the provider module as is."""

    name: str
    type: str
    description: str
    default: Any = ...  # ``...``: required (no default)
    sensitive: bool = False


_COMMON = (
    Var("region", "string", "The cloud's region id (XPlane's region name for local pools)."),
    Var("region_name", "string", "XPlane's name of the region (node ids, agent --region)."),
    Var("service", "string", "Service the nodes serve."),
    Var("node_count", "number", "Number of nodes: the autoscaler edits this."),
    Var("instance_type", "string", "Machine size."),
    Var("api_url", "string", "XPlane API URL the agents register with (TF_VAR_api_url)."),
)

_CLOUD = (
    Var(
        "bootstrap_token",
        "string",
        "Bootstrap token of the agents (TF_VAR_bootstrap_token, from a CI secret).",
        sensitive=True,
    ),
    Var("agent_version", "string", "xplane version installed on the nodes.", "latest"),
    Var("security_group_ids", "list(string)", "Security groups of the nodes.", []),
    Var("key_name", "string", "SSH key pair name (null: none).", None),
)

PROVIDER_VARS: dict[str, tuple[Var, ...]] = {
    "local": (
        *_COMMON,
        Var("token_file", "string", "File holding the bootstrap token (TF_VAR_token_file)."),
        Var("state_dir", "string", "Directory for agent pid/state/log files (TF_VAR_state_dir)."),
        Var("agent_command", "string", "The xplane executable (TF_VAR_agent_command).", "xplane"),
        Var("address_prefix", "string", "Loopback /24 of the nodes: node i is <prefix>.<i+10>."),
        Var("health_port", "number", "Port of each agent's /healthz on its own address.", 18080),
        Var(
            "revision", "string", "Commit being applied (TF_VAR_revision): revives dead agents.", ""
        ),
    ),
    "aws": (
        *_COMMON,
        *_CLOUD,
        Var("ami_id", "string", "AMI of the nodes (null: newest matching ami_name_filter).", None),
        Var(
            "ami_name_filter",
            "string",
            "AMI name pattern looked up when ami_id is null.",
            "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*",
        ),
        Var("ami_owners", "list(string)", "Owners of the looked-up AMI.", ["099720109477"]),
        Var("subnet_id", "string", "Subnet of the nodes (null: the default VPC's).", None),
    ),
    "alicloud": (
        *_COMMON,
        *_CLOUD,
        Var(
            "image_id",
            "string",
            "Image of the nodes (null: newest matching image_name_regex).",
            None,
        ),
        Var(
            "image_name_regex",
            "string",
            "Image name looked up when image_id is null.",
            "^ubuntu_24_04_x64",
        ),
        Var("vswitch_id", "string", "VSwitch (subnet) of the nodes."),
    ),
}

_PROVIDER_BLOCKS = {
    "local": "",
    "aws": (
        "  required_providers {\n"
        "    aws = {\n"
        '      source  = "hashicorp/aws"\n'
        '      version = ">= 5.0"\n'
        "    }\n"
        "  }\n\n"
    ),
    "alicloud": (
        "  required_providers {\n"
        "    alicloud = {\n"
        '      source  = "aliyun/alicloud"\n'
        '      version = ">= 1.220"\n'
        "    }\n"
        "  }\n\n"
    ),
}


def supported_providers() -> list[str]:
    return sorted(PROVIDER_VARS)


def _provider(region: Region) -> str:
    if region.provider not in PROVIDER_VARS:
        raise RenderError(
            f"region {region.name}: no terraform module for provider {region.provider!r} "
            f"(supported: {', '.join(supported_providers())})"
        )
    return region.provider


def hcl_value(value: Any, where: str = "value") -> str:
    """One HCL literal: string, number, bool, null or a list of those."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        # JSON string escapes are valid HCL; template sequences must stay literal.
        return json.dumps(value).replace("${", "$${").replace("%{", "%%{")
    if isinstance(value, Sequence):
        return "[" + ", ".join(hcl_value(item, where) for item in value) + "]"
    raise RenderError(f"{where}: cannot write {type(value).__name__} {value!r} as HCL")


def _aligned(pairs: Sequence[tuple[str, str]], indent: str = "") -> list[str]:
    """``key = value`` lines with the ``=`` aligned as ``terraform fmt`` does."""
    width = max((len(key) for key, _ in pairs), default=0)
    return [f"{indent}{key.ljust(width)} = {value}" for key, value in pairs]


def local_address_prefix(region_name: str) -> str:
    """A stable loopback /24 per region (127.0.1-254.x), so pools never share addresses."""
    return f"127.0.{1 + zlib.crc32(region_name.encode()) % 254}"


def _main_tf(region: Region, service: str, provider: str, source: str) -> str:
    names = [var.name for var in PROVIDER_VARS[provider]]
    header = (
        f"# Generated by `xplane infra render`: node pool of {service} in region "
        f"{region.name} ({provider}).\n"
        f"# Scale it by editing ../{region.name}.tfvars (node_count), not this file.\n\n"
    )
    terraform = (
        'terraform {\n  required_version = ">= 1.4"\n\n'
        + _PROVIDER_BLOCKS[provider]
        + "  # CI may point this elsewhere: -backend-config=path=... or a backend_override.tf.\n"
        + f'  backend "local" {{\n    path = "{STATE_FILE}"\n  }}\n}}\n\n'
    )
    provider_block = f'provider "{provider}" {{\n  region = var.region\n}}\n\n'
    module = (
        'module "node_pool" {\n'
        f"  source = {hcl_value(source)}\n\n"
        + "\n".join(_aligned([(name, f"var.{name}") for name in names], "  "))
        + "\n}\n\n"
    )
    output = (
        'output "node_addresses" {\n'
        '  description = "Address of every node."\n'
        "  value       = module.node_pool.node_addresses\n}\n"
    )
    return header + terraform + ("" if provider == "local" else provider_block) + module + output


def _variable_block(var: Var) -> str:
    pairs = [("description", hcl_value(var.description)), ("type", var.type)]
    if var.default is not ...:
        pairs.append(("default", hcl_value(var.default, f"variable {var.name}")))
    if var.sensitive:
        pairs.append(("sensitive", "true"))
    return f'variable "{var.name}" {{\n' + "\n".join(_aligned(pairs, "  ")) + "\n}\n"


def _variables_tf(provider: str) -> str:
    header = "# Generated by `xplane infra render`. Values: ../<region>.tfvars and TF_VAR_*.\n\n"
    return header + "\n".join(_variable_block(var) for var in PROVIDER_VARS[provider])


def _tfvars(
    region: Region, service: str, provider: str, node_count: int, extra: Mapping[str, Any]
) -> str:
    instance_type = region.instance_type or ("local" if provider == "local" else None)
    if instance_type is None:
        raise RenderError(f"region {region.name}: provider {provider} needs instance_type")
    values: dict[str, Any] = {
        "region": region.location or region.name,
        "region_name": region.name,
        "service": service,
        "node_count": node_count,
        "instance_type": instance_type,
    }
    if provider == "local":
        values["address_prefix"] = local_address_prefix(region.name)
    known = {var.name for var in PROVIDER_VARS[provider]}
    for key, value in extra.items():
        if key not in known:
            raise RenderError(
                f"region {region.name}: extra var {key!r} is not a variable of the "
                f"{provider} module ({', '.join(sorted(known))})"
            )
        values[key] = value
    pairs = [(key, hcl_value(value, f"extra var {key}")) for key, value in values.items()]
    header = (
        f"# Node pool of {service} in {region.name}: the autoscaler edits node_count.\n"
        "# Secrets and paths come from TF_VAR_* in CI.\n"
    )
    return header + "\n".join(_aligned(pairs)) + "\n"


def render_region(
    region: Region,
    *,
    service: str,
    node_count: int,
    module_source: str | None = None,
    extra_vars: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Repo-relative posix path -> text of the region's root module and tfvars."""
    if node_count < 0:
        raise RenderError(f"region {region.name}: node_count must be >= 0, not {node_count}")
    provider = _provider(region)
    source = module_source or f"../modules/{provider}"
    base = f"{NODE_POOL_DIR}/{region.name}"
    return {
        f"{base}/main.tf": _main_tf(region, service, provider, source),
        f"{base}/variables.tf": _variables_tf(provider),
        f"{base}.tfvars": _tfvars(region, service, provider, node_count, extra_vars or {}),
    }


def initial_node_count(config: ConfigTree, service: str, region: Region) -> int:
    """A new pool starts at its floor: the autoscale policy's, else the region's; 0 if retired."""
    if region.retired:
        return 0
    policy = config.autoscale.get(service)
    if policy is not None and region.name in policy.regions:
        return policy.regions[region.name].min_nodes
    return region.min_nodes


def render_tree(config: ConfigTree, *, regions: Sequence[str] | None = None) -> dict[str, str]:
    """Every region some service runs in (or just ``regions``), at its initial node count."""
    hosts: dict[str, list[str]] = {}
    for service in config.services():
        for name in config.regions_of_service(service):
            hosts.setdefault(name, []).append(service)
    wanted = sorted(hosts) if regions is None else list(regions)
    files: dict[str, str] = {}
    for name in wanted:
        if name not in config.regions:
            raise RenderError(f"region {name!r} is not in the config")
        services = hosts.get(name, [])
        if len(services) != 1:
            which = ", ".join(services) or "none"
            raise RenderError(
                f"region {name}: a node pool serves exactly one service, found {which}"
            )
        region = config.regions[name]
        count = initial_node_count(config, services[0], region)
        files.update(render_region(region, service=services[0], node_count=count))
    return files
