"""The route table and path canonicalization: pure rules, no I/O."""

from __future__ import annotations

import pytest

from hub.domain.errors import InvalidInput
from hub.domain.routes import Route, RouteTable, canonical_path, upstream_path


def route(user: str = "alice", server: str = "", server_id: int = 1, **kw: object) -> Route:
    values: dict[str, object] = {
        "user": user,
        "server": server,
        "user_id": 7,
        "server_id": server_id,
        "target": f"http://10.0.0.{server_id}:8888",
        "secret": "s",
    }
    values.update(kw)
    return Route(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/user/alice/", "/user/alice/"),
        ("/user/alice/tree?x=1", "/user/alice/tree"),
        ("/user//alice/./lab/", "/user/alice/lab/"),
        ("//user/alice/", "/user/alice/"),
        ("/user/bob/../alice/", "/user/alice/"),
        ("/user/bob/%2e%2e/alice/", "/user/alice/"),
        ("/user/bob/%2E%2E/alice/x", "/user/alice/x"),
        ("/user/alice/lab/..", "/user/alice"),
        ("/user/alice/.", "/user/alice/"),
        ("/user/%61lice/a%20b", "/user/alice/a b"),
        ("/user/alice/a%3Bb", "/user/alice/a;b"),
        ("/user/alice/%C3%A9t%C3%A9", "/user/alice/\u00e9t\u00e9"),
        ("/user/alice/%252e%252e/", "/user/alice/%2e%2e/"),
    ],
)
def test_canonical_path_normalizes_what_is_safe_to_normalize(raw: str, expected: str) -> None:
    assert canonical_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "/user/alice%2Fx/",
        "/user/alice%2fx/",
        "/user/alice/..%2F..%2Fbob/",
        "/user/alice%5C..%5Cbob/",
        "/user/alice\\..\\bob/",
        "/user/alice;x/",
        "/user/alice/;jsessionid=1",
        "/user/alice/%00",
        "/user/alice/%0d%0aX: y",
        "/user/alice/a b",
        "/user/\u00e9/",
        "/user/../../etc/passwd",
        "/..",
        "user/alice/",
    ],
)
def test_canonical_path_refuses_what_could_be_read_two_ways(raw: str) -> None:
    with pytest.raises(InvalidInput):
        canonical_path(raw)


def test_a_name_never_matches_a_longer_name_by_prefix() -> None:
    table = RouteTable()
    table.add(route("alice"))
    assert table.match("/user/al/") is None
    assert table.match("/user/al") is None
    assert table.match("/user/alicex/") is None
    assert table.match("/user/alice/")[0].user == "alice"  # type: ignore[index]


def test_named_server_first_then_default_server_with_the_rest() -> None:
    table = RouteTable()
    default, lab = route(server_id=1), route(server="lab", server_id=2)
    table.add(default)
    table.add(lab)
    assert table.match("/user/alice/lab/tree/x") == (lab, "/tree/x")
    assert table.match("/user/alice/other/x") == (default, "/other/x")
    assert table.match("/user/alice/") == (default, "/")


def test_prefix_without_its_slash_matches_with_an_empty_rest() -> None:
    table = RouteTable()
    default, lab = route(server_id=1), route(server="lab", server_id=2)
    table.add(default)
    table.add(lab)
    assert table.match("/user/alice") == (default, "")
    assert table.match("/user/alice/lab") == (lab, "")


def test_paths_outside_user_do_not_match() -> None:
    table = RouteTable()
    table.add(route())
    for path in ("/", "/hub/home", "/user/", "/user", "/users/alice/"):
        assert table.match(path) is None


def test_adding_a_route_for_the_same_server_replaces_it_and_remove_drops_it() -> None:
    table = RouteTable()
    table.add(route(server="lab", server_id=5))
    table.add(route(server="lab2", server_id=5))
    assert len(table) == 1
    assert table.match("/user/alice/lab/") is None
    assert table.get(5) is not None and table.get(5).server == "lab2"  # type: ignore[union-attr]
    assert table.remove(5) is not None
    assert table.remove(5) is None and len(table) == 0 and table.get(5) is None


def test_prefix_and_access_rules() -> None:
    shared = route(server="lab", shared_with=frozenset({8}))
    assert shared.prefix == "/user/alice/lab/" and route().prefix == "/user/alice/"
    assert shared.may_access(7, is_admin=False)
    assert shared.may_access(8, is_admin=False)
    assert not shared.may_access(9, is_admin=False)
    # Admins are let in only where the hub's admin_access setting says so.
    assert not shared.may_access(9, is_admin=True)
    assert shared.may_access(9, is_admin=True, admin_access=True)
    assert not RouteTable().allows(shared, 9, is_admin=True)
    assert RouteTable(admin_access=True).allows(shared, 9, is_admin=True)
    assert not RouteTable(admin_access=True).allows(shared, 9, is_admin=False)


@pytest.mark.parametrize(
    ("raw", "rest", "keep", "server", "expected"),
    [
        ("/user/alice/tree/a%20b", "/tree/a b", True, "", "/user/alice/tree/a%20b"),
        ("/user/alice/tree/a%20b", "/tree/a b", False, "", "/tree/a%20b"),
        ("/user/%61lice/x", "/x", True, "", "/user/alice/x"),
        ("/user/alice//x/../y", "/y", True, "", "/user/alice/y"),
        ("/user/alice/lab/api/x%3By", "/api/x;y", False, "lab", "/api/x%3By"),
        ("/user/alice/lab/", "/", False, "lab", "/"),
        ("/user/bob/%2e%2e/alice/z", "/z", True, "", "/user/alice/z"),
        ("/user/bob/../alice/a%3Fb", "/a?b", True, "", "/user/alice/a%3Fb"),
    ],
)
def test_upstream_path_keeps_the_clients_encoding_unless_it_was_normalized(
    raw: str, rest: str, keep: bool, server: str, expected: str
) -> None:
    matched = route(server=server, keep_prefix=keep)
    assert upstream_path(raw, rest, matched) == expected


def test_removing_or_retargeting_a_route_tells_who_kept_something_for_it() -> None:
    table = RouteTable()
    gone: list[Route] = []
    table.on_remove(gone.append)
    first = Route(user="alice", server="", user_id=1, server_id=7, target="http://a:1", secret="s")
    table.add(first)
    table.add(first)  # the same target again: nothing kept for it is stale
    assert gone == []
    moved = Route(user="alice", server="", user_id=1, server_id=7, target="http://b:1", secret="s")
    table.add(moved)
    assert gone == [first]
    table.remove(7)
    assert gone == [first, moved]
    table.remove(7)  # already gone: no second call
    assert gone == [first, moved]
