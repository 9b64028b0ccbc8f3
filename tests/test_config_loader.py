"""Loading a config tree: valid trees, resolution of defaults, and every kind of error."""

from __future__ import annotations

import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest

from xplane.config.errors import ConfigError
from xplane.config.loader import load_config, load_config_from_mapping
from xplane.config.models import ConfigTree, PowerDnsConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "example" / "gitops-config"
ORIGIN = Path(__file__).parent / "fixtures" / "origin-format"


def _d(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


BASE = {
    "regions/global.yaml": _d("""
        defaults:
          provider: aws
          base_weight: 40
        regions:
          - name: jp
            location: ap-northeast-1
          - name: sg
            location: ap-southeast-1
        """),
    "gtm/svc.yaml": _d("""
        service: svc
        domain: api.svc.plus
        regions:
          - name: jp
            weight: 100
          - name: sg
        health:
          interval: 5s
          timeout: 2s
        dns:
          provider: powerdns
        """),
    "autoscale/svc.yaml": _d("""
        service: svc
        regions:
          jp:
            min_nodes: 1
            max_nodes: 5
          sg:
            min_nodes: 0
            max_nodes: 3
        """),
}


def _errors(**overrides: str) -> list[str]:
    """Issues (as their one-line form) of BASE with files replaced/added."""
    files = dict(BASE)
    for key, text in overrides.items():
        files[key.replace("__", "/").replace("_yaml", ".yaml")] = _d(text)
    with pytest.raises(ConfigError) as info:
        load_config_from_mapping(files)
    return [str(issue) for issue in info.value.issues]


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


# ---------------------------------------------------------------- valid trees
def test_base_tree_is_valid_and_resolved() -> None:
    tree = load_config_from_mapping(BASE)
    jp, sg = tree.gtm["svc"].regions
    assert (jp.weight, sg.weight) == (100, 40)  # own weight wins; else the region's base_weight
    assert sg.min_ready_nodes == 1 and sg.health_threshold == 0.5  # Region defaults
    assert tree.regions["sg"].provider == "aws"  # group default merged
    dns = tree.gtm["svc"].dns
    assert isinstance(dns, PowerDnsConfig) and dns.zone == "svc.plus"  # domain's parent


def test_example_tree_is_valid() -> None:
    tree = load_config(EXAMPLE)
    assert set(tree.regions) == {"jp", "sg", "cn-hangzhou"}
    assert tree.regions["cn-hangzhou"].provider == "alicloud"
    assert tree.regions["jp"].location == "ap-northeast-1"
    assert tree.regions["sg"].labels == {"tier": "global"}
    policy = tree.gtm["svc-plus"]
    assert policy.domain == "api.svc.plus"
    assert isinstance(policy.dns, PowerDnsConfig)
    assert (policy.dns.api_url, policy.dns.zone) == ("http://127.0.0.1:8081", "svc.plus")
    # cn-hangzhou has no weight in gtm/: it comes from regions/cn.yaml's base_weight.
    assert tree.gtm_region("svc-plus", "cn-hangzhou").weight == 50  # type: ignore[union-attr]
    assert tree.regions_of_service("svc-plus") == {"jp", "sg", "cn-hangzhou"}


def test_origin_format_files_validate_unchanged() -> None:
    tree = load_config(ORIGIN)
    policy = tree.gtm["svc-plus"]
    assert [(r.name, r.weight, r.fallback) for r in policy.regions] == [
        ("jp", 100, True),
        ("sg", 10, True),
    ]
    assert policy.health.interval == timedelta(seconds=5)
    assert policy.dns is not None and policy.dns.provider == "cloudflare"
    assert policy.dns.ttl == 30 and policy.dns.zone == "svc.plus"
    auto = tree.autoscale["svc-plus"]
    assert auto.global_.cpu_window == timedelta(seconds=60) and auto.global_.max_regions == 3
    assert auto.regions["sg"].scale_down_cpu == 0.25 and auto.regions["sg"].min_nodes == 0
    # The roadmap's regions/jp.yaml (no name: field): the name is the file's stem.
    assert tree.regions["jp"].provider == "aws" and tree.regions["jp"].instance_type == "t3.small"


@pytest.mark.parametrize("root", [EXAMPLE, ORIGIN], ids=["example", "origin"])
def test_tree_round_trips_through_json(root: Path) -> None:
    tree = load_config(root)
    again = ConfigTree.model_validate(tree.model_dump(mode="json", by_alias=True))
    assert again == tree
    assert again.model_dump(mode="json", by_alias=True) == tree.model_dump(
        mode="json", by_alias=True
    )


def test_group_defaults_merge_and_entry_wins() -> None:
    tree = load_config_from_mapping(
        {
            "regions/g.yml": _d("""
                defaults:
                  provider: alicloud
                  max_nodes: 4
                  labels: {tier: cn, team: a}
                regions:
                  - name: cn-hangzhou
                  - name: cn-beijing
                    max_nodes: 8
                    labels: {team: b}
                """),
        }
    )
    hz, bj = tree.regions["cn-hangzhou"], tree.regions["cn-beijing"]
    assert (hz.provider, hz.max_nodes, hz.labels) == ("alicloud", 4, {"tier": "cn", "team": "a"})
    assert (bj.provider, bj.max_nodes, bj.labels) == ("alicloud", 8, {"tier": "cn", "team": "b"})


def test_alias_base_weight_and_explicit_zone_and_two_label_domain() -> None:
    files = dict(BASE)
    files["gtm/svc.yaml"] = _d("""
        service: svc
        domain: svc.plus
        regions:
          - name: jp
            base_weight: 7
        providers:
          - provider: cloudflare
          - provider: alidns
            zone: svc.plus
            regions: [jp]
        """)
    policy = load_config_from_mapping(files).gtm["svc"]
    assert policy.regions[0].weight == 7
    assert [p.zone for p in policy.dns_providers()] == ["svc.plus", "svc.plus"]
    assert policy.providers[1].regions == ["jp"]


def test_missing_folders_are_empty_and_other_files_ignored(tmp_path: Path) -> None:
    assert load_config(tmp_path) == ConfigTree()
    _write(
        tmp_path,
        {
            "regions/jp.yaml": "provider: aws\n",
            "regions/README.md": "not yaml: [",
            "regions/nested/x.yaml": "not: [valid",
            "notes/x.yaml": "garbage: [",
            "regions/.hidden.yaml": "garbage: [",
        },
    )
    tree = load_config(tmp_path)
    assert list(tree.regions) == ["jp"]


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    _write(tmp_path, {"regions/jp.yaml": "provider: aws\n"})
    (tmp_path / "gtm").mkdir()
    (tmp_path / "gtm" / "svc.yaml").write_bytes(b"service: \xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    [issue] = info.value.issues
    assert issue.file == "gtm/svc.yaml" and issue.message.startswith("cannot read file")


def test_tree_helpers() -> None:
    files = dict(BASE)
    files["autoscale/other.yaml"] = "service: other\nregions:\n  sg: {}\n"
    tree = load_config_from_mapping(files)
    assert tree.services() == ["other", "svc"]
    assert tree.regions_of_service("other") == {"sg"}
    assert tree.regions_of_service("missing") == set()
    assert tree.services_in_region("sg") == ["other", "svc"]
    assert tree.services_in_region("jp") == ["svc"]
    assert tree.gtm_region("svc", "nowhere") is None
    assert tree.summary() == "2 regions, 1 gtm policy, 2 autoscale policies"


def test_tree_rejects_entries_filed_under_another_name() -> None:
    data = load_config_from_mapping(BASE).model_dump(mode="json", by_alias=True)
    data["regions"]["kr"] = data["regions"].pop("jp")
    with pytest.raises(ValueError, match="filed under 'kr' but named 'jp'"):
        ConfigTree.model_validate(data)


# -------------------------------------------------------------- invalid trees
INVALID = {
    "bad yaml": (
        {"gtm/svc.yaml": "service: svc\n  domain: x\n"},
        ["gtm/svc.yaml:2: invalid YAML: mapping values are not allowed here"],
    ),
    "empty file": (
        {"gtm/svc.yaml": "# nothing yet\n"},
        ["gtm/svc.yaml: file is empty: expected a mapping (key: value)"],
    ),
    "top level list": (
        {"autoscale/svc.yaml": "- service: svc\n"},
        ["autoscale/svc.yaml: top level must be a mapping (key: value), not a list"],
    ),
    "unknown key": (
        {"gtm/svc.yaml": BASE["gtm/svc.yaml"] + "colour: blue\n"},
        ["gtm/svc.yaml:12: colour: unknown field 'colour'"],
    ),
    "unknown key in provider": (
        {"gtm/svc.yaml": BASE["gtm/svc.yaml"] + "  token: abc\n"},
        ["gtm/svc.yaml:12: dns.token: unknown field 'token'"],
    ),
    "wrong type": (
        {"gtm/svc.yaml": BASE["gtm/svc.yaml"].replace("weight: 100", "weight: heavy")},
        ["gtm/svc.yaml:5: regions[0].weight: must be a number, not 'heavy'"],
    ),
    "negative weight": (
        {"gtm/svc.yaml": BASE["gtm/svc.yaml"].replace("weight: 100", "weight: -1")},
        ["gtm/svc.yaml:5: regions[0].weight: must be >= 0, not -1"],
    ),
    "threshold above 1": (
        {
            "gtm/svc.yaml": BASE["gtm/svc.yaml"].replace(
                "- name: sg", "- name: sg\n    health_threshold: 1.5"
            )
        },
        ["gtm/svc.yaml:7: regions[1].health_threshold: must be <= 1, not 1.5"],
    ),
    "autoscale min above max": (
        {"autoscale/svc.yaml": BASE["autoscale/svc.yaml"].replace("min_nodes: 1", "min_nodes: 9")},
        ["autoscale/svc.yaml:4: regions.jp.min_nodes: must be <= max_nodes (5), not 9"],
    ),
    "max_replace of no node": (
        {"autoscale/svc.yaml": BASE["autoscale/svc.yaml"] + "max_replace: 0%\n"},
        [
            "autoscale/svc.yaml:9: max_replace: must be a node count or a percentage in "
            "(0%, 100%], not '0%'"
        ],
    ),
    "region min above max": (
        {"regions/kr.yaml": "min_nodes: 3\nmax_nodes: 2\n"},
        ["regions/kr.yaml:1: min_nodes: must be <= max_nodes (2), not 3"],
    ),
    "scale_down_cpu not below scale_up_cpu": (
        {"autoscale/svc.yaml": BASE["autoscale/svc.yaml"] + "    scale_down_cpu: 0.8\n"},
        [
            "autoscale/svc.yaml:9: regions.sg.scale_down_cpu: must be below scale_up_cpu (0.7), "
            "not 0.8"
        ],
    ),
    "unknown region in gtm": (
        {"gtm/svc.yaml": BASE["gtm/svc.yaml"].replace("- name: sg", "- name: kr")},
        ["gtm/svc.yaml:6: regions[1].name: unknown region 'kr': not declared in regions/ (jp, sg)"],
    ),
    "unknown region in autoscale": (
        {"autoscale/svc.yaml": BASE["autoscale/svc.yaml"].replace("  sg:", "  kr:")},
        [
            "autoscale/svc.yaml:6: regions.kr: unknown region 'kr': not declared in regions/ "
            "(jp, sg)"
        ],
    ),
    "duplicate service": (
        {"gtm/svc-copy.yaml": BASE["gtm/svc.yaml"]},
        ["gtm/svc.yaml:1: service: service 'svc' already has a gtm policy in gtm/svc-copy.yaml"],
    ),
    "duplicate autoscale service": (
        {"autoscale/b.yaml": "service: svc\nregions: {jp: {}}\n"},
        [
            "autoscale/svc.yaml:1: service: service 'svc' already has an autoscale policy in "
            "autoscale/b.yaml"
        ],
    ),
    "bad duration": (
        {"gtm/svc.yaml": BASE["gtm/svc.yaml"].replace("interval: 5s", "interval: 5 minutes")},
        [
            "gtm/svc.yaml:8: health.interval: invalid duration '5 minutes': "
            "use a number and a unit (ms, s, m, h, d), e.g. 5s"
        ],
    ),
    "bad domain": (
        {"gtm/svc.yaml": BASE["gtm/svc.yaml"].replace("api.svc.plus", "api_svc")},
        [
            "gtm/svc.yaml:2: domain: invalid domain 'api_svc': must be a fully qualified domain "
            "name like api.svc.plus"
        ],
    ),
    "domain outside zone": (
        {"gtm/svc.yaml": BASE["gtm/svc.yaml"] + "  zone: example.com\n"},
        ["gtm/svc.yaml:12: dns.zone: domain 'api.svc.plus' is not inside zone 'example.com'"],
    ),
    "provider region not in service": (
        {
            "regions/kr.yaml": "provider: aws\n",
            "gtm/svc.yaml": BASE["gtm/svc.yaml"] + "  regions: [jp, kr]\n",
        },
        [
            "gtm/svc.yaml:12: dns.regions[1]: region 'kr' is not one of this service's gtm "
            "regions (jp, sg)"
        ],
    ),
    "unknown dns provider": (
        {"gtm/svc.yaml": BASE["gtm/svc.yaml"].replace("provider: powerdns", "provider: bind")},
        [
            "gtm/svc.yaml:11: dns.provider: unknown provider 'bind': "
            "expected one of 'powerdns', 'cloudflare', 'route53', 'alidns'"
        ],
    ),
    "provider without provider": (
        {"gtm/svc.yaml": BASE["gtm/svc.yaml"] + "providers:\n  - ttl: 60\n"},
        ["gtm/svc.yaml:13: providers[0].provider: is required"],
    ),
    "duplicate region name across files": (
        {"regions/sg.yaml": "provider: aws\n"},
        ["regions/sg.yaml: name: region 'sg' is already declared in regions/global.yaml"],
    ),
    "empty gtm regions": (
        {"gtm/svc.yaml": "service: svc\ndomain: api.svc.plus\nregions: []\n"},
        ["gtm/svc.yaml:3: regions: must not be empty"],
    ),
    "gtm region listed twice": (
        {"gtm/svc.yaml": BASE["gtm/svc.yaml"].replace("- name: sg", "- name: jp")},
        ["gtm/svc.yaml:6: regions[1].name: region 'jp' is listed twice"],
    ),
    "health timeout not below interval": (
        {"gtm/svc.yaml": BASE["gtm/svc.yaml"].replace("timeout: 2s", "timeout: 5s")},
        ["gtm/svc.yaml:9: health.timeout: must be shorter than interval (5s), not 5s"],
    ),
    "min_regions above max_regions": (
        {
            "autoscale/svc.yaml": BASE["autoscale/svc.yaml"]
            + "global: {min_regions: 3, max_regions: 2}\n"
        },
        ["autoscale/svc.yaml:9: global.min_regions: must be <= max_regions (2), not 3"],
    ),
    "duplicate yaml key": (
        {"autoscale/svc.yaml": BASE["autoscale/svc.yaml"] + "service: svc\n"},
        ["autoscale/svc.yaml:9: service: duplicate key"],
    ),
    "bad region name from file stem": (
        {"regions/Tokyo.yaml": "provider: aws\n"},
        [
            "regions/Tokyo.yaml: name: invalid name 'Tokyo': use lowercase letters, digits and '-' "
            "(at most 63, not starting or ending with '-') (taken from the file name; "
            "set name: to override)"
        ],
    ),
    "bad group": (
        {"regions/cn.yaml": "defaults: {provider: alicloud}\nregion: []\n"},
        [
            "regions/cn.yaml: regions: must be a non-empty list of regions",
            "regions/cn.yaml:2: region: unknown field 'region' (a region group has defaults, "
            "regions)",
        ],
    ),
    "missing required field": (
        {"gtm/svc.yaml": "service: svc\nregions: [{name: jp}]\n"},
        ["gtm/svc.yaml: domain: is required"],
    ),
    "unknown health type": (
        {"gtm/svc.yaml": BASE["gtm/svc.yaml"].replace("interval: 5s", "type: icmp")},
        ["gtm/svc.yaml:8: health.type: must be one of 'http' or 'tcp', not 'icmp'"],
    ),
}


@pytest.mark.parametrize(("files", "expected"), list(INVALID.values()), ids=list(INVALID))
def test_invalid_input_is_reported_with_file_field_and_line(
    files: dict[str, str], expected: list[str]
) -> None:
    merged = {**BASE, **files}
    with pytest.raises(ConfigError) as info:
        load_config_from_mapping(merged)
    assert [str(issue) for issue in info.value.issues] == expected
    assert str(info.value) == "\n".join(expected)


def test_all_errors_across_files_are_reported() -> None:
    files = {
        **BASE,
        "regions/global.yaml": BASE["regions/global.yaml"].replace("base_weight: 40", "foo: 1"),
        "gtm/svc.yaml": BASE["gtm/svc.yaml"].replace("weight: 100", "weight: -5"),
        "autoscale/svc.yaml": BASE["autoscale/svc.yaml"].replace("  sg:", "  kr:")
        + "jitter: soon\n",
        "regions/bad.yaml": "[1, 2",
    }
    with pytest.raises(ConfigError) as info:
        load_config_from_mapping(files)
    got = {(i.file, i.path) for i in info.value.issues}
    assert got == {
        ("autoscale/svc.yaml", "jitter"),
        ("autoscale/svc.yaml", "regions.kr"),
        ("gtm/svc.yaml", "regions[0].weight"),
        ("regions/bad.yaml", ""),
        ("regions/global.yaml", "defaults.foo"),
    }
    # An invalid region group still declares its names: no cascade of "unknown region".
    assert all("unknown region 'jp'" not in i.message for i in info.value.issues)
    issue = next(i for i in info.value.issues if i.path == "regions[0].weight")
    assert (issue.line, issue.message) == (5, "must be >= 0, not -5")


def _only_issue(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_from_mapping({**BASE, "gtm/bomb.yaml": text})
    (issue,) = info.value.issues
    assert issue.file == "gtm/bomb.yaml"
    return str(issue)


def test_deeply_nested_yaml_is_a_config_error_not_a_crash() -> None:
    depth = 10_000
    assert "nested more than 64 levels deep" in _only_issue("a: " + "[" * depth + "]" * depth)
    assert "nested more than 64 levels deep" in _only_issue(
        "".join(f"{' ' * i}k{i}:\n" for i in range(200)) + " " * 200 + "k: 1\n"
    )


def test_alias_bombs_and_self_referencing_aliases_are_config_errors() -> None:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    started = time.monotonic()
    assert "more than 100000 values once aliases are expanded" in _only_issue("\n".join(lines))
    assert time.monotonic() - started < 10  # 10**10 values if expanded
    assert "levels deep (through aliases)" in _only_issue("a: &a [x, *a]\n")


def test_ordinary_anchors_and_merge_keys_still_load() -> None:
    files = dict(BASE)
    files["autoscale/svc.yaml"] = _d("""
        service: svc
        regions:
          jp: &pool
            min_nodes: 1
            max_nodes: 5
          sg:
            <<: *pool
            min_nodes: 0
        """)
    policy = load_config_from_mapping(files).autoscale["svc"]
    assert (policy.regions["sg"].min_nodes, policy.regions["sg"].max_nodes) == (0, 5)
