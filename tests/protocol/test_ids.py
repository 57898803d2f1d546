"""Upload ids and node ids: the grammar load balancers and stores rely on."""

from __future__ import annotations

import re

import pytest

from tether.protocol.ids import (
    UPLOAD_ID,
    check_node_id,
    new_upload_id,
    node_id_from_host,
    node_of,
)

HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize("node", ["n1", "web-01", "A_b-9", "x" * 63, "0"])
def test_valid_node_ids(node: str) -> None:
    assert check_node_id(node) == node


@pytest.mark.parametrize(
    "node", ["", "n.1", "a/b", "-n", "_n", "n 1", "x" * 64, "ü", "n%2e", "..", "n\n"]
)
def test_invalid_node_ids_say_what_is_allowed(node: str) -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        check_node_id(node)


@pytest.mark.parametrize(
    ("host", "node"),
    [
        ("web-01.example.com", "web-01"),
        ("WEB_2", "WEB_2"),
        ("", "node"),
        ("-odd host-", "odd-host-"),
        ("x" * 80 + ".lan", "x" * 63),
    ],
)
def test_node_ids_from_host_names_are_valid(host: str, node: str) -> None:
    assert node_id_from_host(host) == node
    check_node_id(node)


def test_ids_carry_the_node_before_a_dot() -> None:
    upload_id = new_upload_id("n1")
    node, _, token = upload_id.partition(".")
    assert node == "n1" and HEX32.fullmatch(token)
    assert node_of(upload_id) == "n1"
    assert UPLOAD_ID.fullmatch(upload_id)


def test_ids_without_a_node_are_plain_hex() -> None:
    upload_id = new_upload_id()
    assert HEX32.fullmatch(upload_id)
    assert node_of(upload_id) is None
    assert UPLOAD_ID.fullmatch(upload_id)


@pytest.mark.parametrize(
    "text", ["abc", "n1.abc", "gone-node.0123", "a_b", "x" * 128, "n" * 63 + "." + "f" * 128]
)
def test_urls_may_carry_ids_of_any_node_or_none(text: str) -> None:
    assert UPLOAD_ID.fullmatch(text)


@pytest.mark.parametrize(
    "text",
    ["", ".", "..", ".abc", "abc.", "a.b.c", "a/b", "a..b", "n1./x", "x" * 129, "a b", "a%2f"],
)
def test_nothing_else_is_an_upload_id(text: str) -> None:
    assert not UPLOAD_ID.fullmatch(text)
