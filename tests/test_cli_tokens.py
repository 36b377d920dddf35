"""``labdock token list|revoke`` and ``labdock user reset-password``, as an operator runs them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.test_cli import run


def add_alice(tmp_path: Path) -> None:
    added = run("user", "add", "alice", "--password-stdin", cwd=tmp_path, stdin="correct horse\n")
    assert added.returncode == 0, added.stderr


def listed_ids(tmp_path: Path, name: str = "alice") -> list[str]:
    done = run("token", "list", name, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return re.findall(r"^\s*(\d+)\s", done.stdout, flags=re.MULTILINE)


def test_tokens_are_listed_without_secrets_and_revoked_one_or_all(tmp_path: Path) -> None:
    add_alice(tmp_path)
    assert "alice has no API tokens" in run("token", "list", "alice", cwd=tmp_path).stdout
    tokens = [run("token", "create", "alice", cwd=tmp_path).stdout.strip() for _ in range(3)]
    listing = run("token", "list", "alice", cwd=tmp_path)
    assert all(t and t not in listing.stdout and t[4:12] not in listing.stdout for t in tokens)
    assert "access:servers,read:servers,servers" in listing.stdout
    first, *rest = listed_ids(tmp_path)
    done = run("token", "revoke", "alice", first, cwd=tmp_path)
    assert done.returncode == 0 and f"revoked token {first} of alice" in done.stdout
    assert listed_ids(tmp_path) == rest
    again = run("token", "revoke", "alice", first, cwd=tmp_path)
    assert again.returncode == 1 and f"alice has no token {first}" in again.stderr
    everything = run("token", "revoke", "alice", "--all", cwd=tmp_path)
    assert everything.returncode == 0 and "revoked 2 tokens of alice" in everything.stdout
    assert listed_ids(tmp_path) == []


def test_revoke_needs_exactly_one_of_an_id_or_all(tmp_path: Path) -> None:
    add_alice(tmp_path)
    for args in ([], ["1", "--all"], ["one"]):
        done = run("token", "revoke", "alice", *args, cwd=tmp_path)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "Traceback" not in done.stderr


def test_tokens_get_the_configured_default_expiry(tmp_path: Path) -> None:
    add_alice(tmp_path)
    env = {"LABDOCK_HUB_TOKEN_EXPIRY_DAYS": "30"}
    assert run("token", "create", "alice", cwd=tmp_path, env=env).returncode == 0
    never = {"LABDOCK_HUB_TOKEN_EXPIRY_DAYS": "0"}
    assert run("token", "create", "alice", cwd=tmp_path, env=never).returncode == 0
    lines = run("token", "list", "alice", cwd=tmp_path).stdout.splitlines()[1:]
    # ID, CREATED (date time), LAST USED (never), EXPIRES (date time, or never), SCOPES
    first, second = lines[0].split(), lines[1].split()
    expires = datetime.strptime(f"{first[4]} {first[5]}", "%Y-%m-%d %H:%M")
    left = expires.replace(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(days=29) < left <= timedelta(days=30)
    assert second[3:5] == ["never", "never"]
    bad = run("token", "create", "alice", cwd=tmp_path, env={"LABDOCK_HUB_TOKEN_EXPIRY_DAYS": "-1"})
    assert bad.returncode == 2 and "hub.token_expiry_days" in bad.stderr


def test_reset_password_prints_a_one_time_password_and_may_revoke_tokens(tmp_path: Path) -> None:
    add_alice(tmp_path)
    run("token", "create", "alice", cwd=tmp_path)
    kept = run("user", "reset-password", "alice", cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr
    assert "one-time password of alice: " in kept.stdout
    assert len(listed_ids(tmp_path)) == 1
    gone = run("user", "reset-password", "alice", "--revoke-tokens", cwd=tmp_path)
    assert gone.returncode == 0 and "API tokens are revoked" in gone.stdout
    assert listed_ids(tmp_path) == []
