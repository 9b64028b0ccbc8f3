"""render_region / render_tree / `xplane infra render`: terraform-fmt-clean, right per provider."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.test_infra_support import ROOT, tf_env
from xplane.cli.main import app
from xplane.config.loader import load_config
from xplane.config.models import Region
from xplane.gitops.tfvars import get_node_count, set_node_count
from xplane.infra.changes import service_of
from xplane.infra.render import (
    PROVIDER_VARS,
    RenderError,
    local_address_prefix,
    render_region,
    render_tree,
)

EXAMPLE = ROOT / "example" / "gitops-config"
MODULES = ROOT / "infra" / "node-pool" / "modules"
_VARIABLE = re.compile(r'^variable "(\w+)"', re.M)


def _values(tfvars: str) -> dict[str, str]:
    """key -> raw HCL value of every assignment line."""
    return dict(re.findall(r"^(\w+) +\= (.+)$", tfvars, re.M))


def _fmt_clean(text: str, env: dict[str, str]) -> bool:
    done = subprocess.run(
        ["terraform", "fmt", "-check", "-"], input=text, text=True, capture_output=True, env=env
    )
    return done.returncode == 0


def _regions() -> list[Region]:
    return [
        Region(name="dev", provider="local"),
        Region(name="jp", provider="aws", location="ap-northeast-1", instance_type="t3.small"),
        Region(
            name="cn-hangzhou",
            provider="alicloud",
            location="cn-hangzhou",
            instance_type="ecs.t6-c1m1.large",
        ),
    ]


@pytest.mark.parametrize("region", _regions(), ids=lambda r: r.provider)
def test_render_is_fmt_clean_and_wires_every_variable(region: Region, tmp_path: Path) -> None:
    files = render_region(region, service="svc-plus", node_count=3)
    base = f"infra/node-pool/{region.name}"
    assert sorted(files) == [f"{base}.tfvars", f"{base}/main.tf", f"{base}/variables.tf"]
    env = tf_env(tmp_path)
    for path, text in files.items():
        assert _fmt_clean(text, env), f"{path} is not terraform fmt clean:\n{text}"

    main = files[f"{base}/main.tf"]
    assert f'source = "../modules/{region.provider}"' in main
    assert 'backend "local"' in main
    declared = _VARIABLE.findall(files[f"{base}/variables.tf"])
    assert declared == [var.name for var in PROVIDER_VARS[region.provider]]
    for name in declared:
        assert re.search(rf"^  {name} +\= var\.{name}$", main, re.M), name
    # The root passes exactly the variables the provider module declares (no drift).
    module_vars = set(_VARIABLE.findall((MODULES / region.provider / "variables.tf").read_text()))
    assert module_vars == set(declared)

    tfvars = files[f"{base}.tfvars"]
    assert get_node_count(tfvars) == 3
    assert service_of(tfvars) == "svc-plus"
    assert re.search(rf'^region +\= "{region.location or region.name}"$', tfvars, re.M)
    assert re.search(rf'^region_name +\= "{region.name}"$', tfvars, re.M)
    # The autoscaler's one-line edit keeps the file fmt clean.
    assert _fmt_clean(set_node_count(tfvars, 12), env)
    assert "token" not in tfvars and "api_url" not in tfvars  # secrets come from TF_VAR_*


def test_cloud_providers_configure_their_provider() -> None:
    aws, alicloud = _regions()[1:]
    aws_main = render_region(aws, service="s", node_count=1)["infra/node-pool/jp/main.tf"]
    assert 'source  = "hashicorp/aws"' in aws_main and 'provider "aws"' in aws_main
    ali_main = render_region(alicloud, service="s", node_count=1)[
        "infra/node-pool/cn-hangzhou/main.tf"
    ]
    assert 'source  = "aliyun/alicloud"' in ali_main and 'provider "alicloud"' in ali_main
    local = render_region(_regions()[0], service="s", node_count=1)["infra/node-pool/dev/main.tf"]
    assert "required_providers" not in local and "provider " not in local


def test_local_tfvars_and_extra_vars() -> None:
    region = Region(name="dev", provider="local")
    tfvars = render_region(region, service="s", node_count=0)["infra/node-pool/dev.tfvars"]
    values = _values(tfvars)
    assert values["instance_type"] == '"local"'
    assert values["address_prefix"] == f'"{local_address_prefix("dev")}"'
    assert local_address_prefix("dev") != local_address_prefix("jp")
    extra = {"health_port": 9999, "address_prefix": "127.9.9", "agent_command": "${oops}"}
    tfvars = render_region(region, service="s", node_count=1, extra_vars=extra)[
        "infra/node-pool/dev.tfvars"
    ]
    values = _values(tfvars)
    assert values["health_port"] == "9999" and values["address_prefix"] == '"127.9.9"'
    assert values["agent_command"] == '"$${oops}"'  # a literal, never a template


def test_module_source_override() -> None:
    files = render_region(
        Region(name="dev"), service="s", node_count=1, module_source="git::https://x/m.git"
    )
    assert 'source = "git::https://x/m.git"' in files["infra/node-pool/dev/main.tf"]


@pytest.mark.parametrize(
    ("region", "kwargs", "message"),
    [
        (Region(name="x", provider="tencent"), {}, "no terraform module for provider 'tencent'"),
        (Region(name="x", provider="aws"), {}, "provider aws needs instance_type"),
        (Region(name="x"), {"node_count": -1}, "node_count must be >= 0"),
        (Region(name="x"), {"extra_vars": {"bogus": 1}}, "extra var 'bogus' is not a variable"),
        (Region(name="x"), {"extra_vars": {"health_port": {"a": 1}}}, "cannot write dict"),
    ],
)
def test_render_errors_name_the_region(
    region: Region, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"service": "s", "node_count": 1, **kwargs}
    with pytest.raises(RenderError, match=re.escape(message)) as err:
        render_region(region, **args)  # type: ignore[arg-type]
    assert "x" in str(err.value)


def test_render_tree_renders_every_used_region_at_its_floor() -> None:
    tree = load_config(EXAMPLE)
    files = render_tree(tree)
    tfvars = {p: t for p, t in files.items() if p.endswith(".tfvars")}
    counts = {p.rsplit("/", 1)[1]: get_node_count(t) for p, t in tfvars.items()}
    # autoscale/svc-plus.yaml floors: jp 1, sg 0, cn-hangzhou 1.
    assert counts == {"cn-hangzhou.tfvars": 1, "jp.tfvars": 1, "sg.tfvars": 0}
    assert 'source = "../modules/alicloud"' in files["infra/node-pool/cn-hangzhou/main.tf"]
    assert 'source = "../modules/aws"' in files["infra/node-pool/jp/main.tf"]
    assert sorted(render_tree(tree, regions=["sg"])) == [
        "infra/node-pool/sg.tfvars",
        "infra/node-pool/sg/main.tf",
        "infra/node-pool/sg/variables.tf",
    ]
    with pytest.raises(RenderError, match="'nowhere' is not in the config"):
        render_tree(tree, regions=["nowhere"])


def test_cli_render_keeps_the_autoscalers_node_count(tmp_path: Path) -> None:
    out = tmp_path / "infra-repo"
    runner = CliRunner()
    args = ["infra", "render", "--config", str(EXAMPLE), "--out", str(out), "--region", "jp"]
    first = runner.invoke(app, [*args, "--provider", "local", "--skeleton"])
    assert first.exit_code == 0, first.output
    tfvars = out / "infra/node-pool/jp.tfvars"
    assert get_node_count(tfvars.read_text()) == 1
    assert (out / "infra/node-pool/modules/local/main.tf").is_file()
    assert 'source = "../modules/local"' in (out / "infra/node-pool/jp/main.tf").read_text()
    tfvars.write_text(set_node_count(tfvars.read_text(), 4))
    again = runner.invoke(app, args)  # provider aws now: files re-rendered, count kept
    assert again.exit_code == 0, again.output
    assert get_node_count(tfvars.read_text()) == 4
    assert _values(tfvars.read_text())["instance_type"] == '"t3.small"'
    bad = runner.invoke(app, [*args[:-1], "nowhere"])
    assert bad.exit_code == 1 and "'nowhere' is not in the config" in bad.output
