"""Names of domains and volumes."""

from __future__ import annotations

import re

import pytest

from vms.hypervisor.naming import MAX_NAME_LENGTH, domain_name, is_ours, volume_name

NAME_RE = re.compile(r"^[a-z0-9-]+$")


def test_simple_ids_are_kept_readable() -> None:
    assert domain_name("desk-", "42") == "desk-42"
    assert volume_name("desk-", "42") == "desk-42.qcow2"
    uid = "0b5a6c1e-8f0e-4c1b-9d3c-2f1e5b7a9c11"
    assert domain_name("desk-", uid) == f"desk-{uid}"


@pytest.mark.parametrize(
    "desktop_id",
    ["A_b", "a b", "Ünïcödé", "../../etc/passwd", "x" * 200, "-", "<&>\"'", "😀"],
)
def test_names_are_sanitised_and_bounded(desktop_id: str) -> None:
    name = domain_name("desk-", desktop_id)
    assert NAME_RE.fullmatch(name), name
    assert name.startswith("desk-")
    assert len(name) <= MAX_NAME_LENGTH
    assert is_ours(name, "desk-")
    assert is_ours(volume_name("desk-", desktop_id), "desk-")


def test_distinct_ids_give_distinct_names() -> None:
    ids = ["a_b", "a-b", "A-B", "a b", "a__b", "x" * 100, "x" * 101, "AB", "ab"]
    names = {domain_name("p-", i) for i in ids}
    assert len(names) == len(ids)


def test_is_ours() -> None:
    assert is_ours("desk-1", "desk-")
    assert is_ours("desk-1.qcow2", "desk-")
    assert not is_ours("desk-", "desk-")
    assert not is_ours("other-1", "desk-")
    assert not is_ours("desk-UPPER", "desk-")
    assert not is_ours("desk-" + "x" * 100, "desk-")


@pytest.mark.parametrize("prefix", ["", "Desk-", "1desk", "de sk", "d" * 40])
def test_bad_prefix_is_rejected(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        domain_name(prefix, "1")


def test_empty_id_is_rejected() -> None:
    with pytest.raises(ValueError):
        domain_name("desk-", "")
