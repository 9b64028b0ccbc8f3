"""node_count editing: one value changes, every other byte stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from xplane.gitops.tfvars import TfvarsError, get_node_count, set_node_count

JP = (Path(__file__).parent / "fixtures" / "node-pool" / "jp.tfvars").read_text(encoding="utf-8")


def test_origin_file_edits_only_the_value() -> None:
    assert get_node_count(JP) == 2
    edited = set_node_count(JP, 3)
    assert edited == JP.replace("node_count     = 2", "node_count     = 3")
    assert get_node_count(edited) == 3
    before, after = JP.splitlines(keepends=True), edited.splitlines(keepends=True)
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert changed == [2]


def test_same_count_is_byte_identical() -> None:
    assert set_node_count(JP, 2) == JP


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("node_count = 2 # keep me\n", 10, "node_count = 10 # keep me\n"),
        ('node_count = "2"\n', 5, 'node_count = "5"\n'),
        ("a = 1\r\nnode_count=2\r\nb = 2\r\n", 0, "a = 1\r\nnode_count=0\r\nb = 2\r\n"),
        ("  node_count\t=  7   // why\nx = 1", 8, "  node_count\t=  8   // why\nx = 1"),
        (
            # node_count nested in a block is not the pool's; the top-level one is edited
            'tags = {\n  node_count = 9\n}\nnode_count = 1\nname = "a { b"\n',
            4,
            'tags = {\n  node_count = 9\n}\nnode_count = 4\nname = "a { b"\n',
        ),
    ],
)
def test_edit_keeps_layout(text: str, n: int, expected: str) -> None:
    assert set_node_count(text, n) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # aligned with the file's other assignments
        (
            'region         = "jp"\nservice        = "svc"\n',
            'region         = "jp"\nservice        = "svc"\nnode_count     = 3\n',
        ),
        ('region = "jp"\nlonger_name = 1', 'region = "jp"\nlonger_name = 1\nnode_count = 3\n'),
        ("", "node_count = 3\n"),
        ("# only a comment\r\n", "# only a comment\r\nnode_count = 3\r\n"),
    ],
)
def test_absent_node_count_is_appended(text: str, expected: str) -> None:
    assert get_node_count(text) is None
    assert set_node_count(text, 3) == expected
    assert get_node_count(expected) == 3


def test_two_assignments_are_refused() -> None:
    text = 'node_count = 1\nregion = "jp"\nnode_count = 2\n'
    with pytest.raises(TfvarsError, match=r"assigned 2 times \(lines 1, 3\)"):
        set_node_count(text, 3)
    with pytest.raises(TfvarsError, match="assigned 2 times"):
        get_node_count(text)


@pytest.mark.parametrize("value", ["var.count", "2.5", "-1", '"two"'])
def test_non_integer_value_is_refused(value: str) -> None:
    with pytest.raises(TfvarsError, match="line 2: node_count must be a whole number"):
        set_node_count(f"a = 1\nnode_count = {value}\n", 3)


def test_negative_count_is_refused() -> None:
    with pytest.raises(TfvarsError, match=">= 0"):
        set_node_count(JP, -1)
