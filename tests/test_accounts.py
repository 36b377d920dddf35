"""Accounts: usernames, passwords, the first admin and sessions, on the real database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import async_sessionmaker

from hub.db.accounts import SqlAccountRepo
from hub.db.engine import make_engine
from hub.db.migrate import upgrade
from hub.db.teams import SqlTeamRepo
from hub.domain.accounts import Accounts, check_username
from hub.domain.errors import Conflict, Forbidden, InvalidInput, Unauthorized
from hub.passwords import Argon2Hasher


class StepClock:
    def __init__(self) -> None:
        self.at = datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self.at


@pytest.mark.parametrize("name", ["alice", "a", "bob.smith", "x_1-2", "0day", "a" * 32])
def test_plain_usernames_are_accepted(name: str) -> None:
    assert check_username(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Alice",  # would silently become alice
        "\u212aate",  # Kelvin sign: NFKC + casefold gives 'kate'
        "ﬁle",  # ligature
        "-rf",
        ".hidden",
        "a" * 33,
        "../etc",
        "al/ice",
        "alice\x00",
        "al ice",
        "élodie",
    ],
)
def test_hostile_or_ambiguous_usernames_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match="username"):
        check_username(name)


@pytest_asyncio.fixture
async def parts(db_url: str) -> AsyncIterator[tuple[Accounts, StepClock, SqlTeamRepo]]:
    upgrade(db_url)
    engine = make_engine(db_url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    clock = StepClock()
    yield Accounts(SqlAccountRepo(sessions), Argon2Hasher(), clock), clock, SqlTeamRepo(sessions)
    await engine.dispose()


async def test_first_admin_is_created_once_with_a_one_time_password(parts) -> None:  # type: ignore[no-untyped-def]
    accounts, _, _ = parts
    password = await accounts.ensure_admin("admin")
    assert password and len(password) >= 12
    assert await accounts.ensure_admin("admin") is None
    admin = await accounts.authenticate("admin", password)
    assert admin.is_admin and admin.must_change_password


async def test_wrong_password_and_unknown_user_get_the_same_answer(parts) -> None:  # type: ignore[no-untyped-def]
    accounts, _, _ = parts
    await accounts.create_user("alice", "correct horse")
    for name, password in [("alice", "wrong horse"), ("nobody", "correct horse"), ("../x", "p")]:
        with pytest.raises(Unauthorized, match="wrong username or password"):
            await accounts.authenticate(name, password)


async def test_duplicate_user_is_a_conflict(parts) -> None:  # type: ignore[no-untyped-def]
    accounts, _, _ = parts
    await accounts.create_user("alice", "correct horse")
    with pytest.raises(Conflict, match="already exists"):
        await accounts.create_user("alice", "another one")


async def test_short_password_is_refused(parts) -> None:  # type: ignore[no-untyped-def]
    accounts, _, _ = parts
    with pytest.raises(InvalidInput, match="at least 8"):
        await accounts.create_user("alice", "short")


async def test_sessions_expire_and_end_at_logout(parts) -> None:  # type: ignore[no-untyped-def]
    accounts, clock, _ = parts
    user, _ = await accounts.create_user("alice", "correct horse")
    first = await accounts.start_session(user, hours=1)
    assert (await accounts.session_user(first)) == user
    clock.at += timedelta(minutes=61)
    assert await accounts.session_user(first) is None
    second = await accounts.start_session(user, hours=1)
    await accounts.end_session(second)
    assert await accounts.session_user(second) is None
    assert await accounts.session_user("forged") is None


async def test_password_change_needs_the_current_one(parts) -> None:  # type: ignore[no-untyped-def]
    accounts, _, _ = parts
    user, one_time = await accounts.create_user("alice")
    assert one_time is not None
    with pytest.raises(Unauthorized):
        await accounts.change_password(user.id, "not it", "a new password")
    await accounts.change_password(user.id, one_time, "a new password")
    again = await accounts.authenticate("alice", "a new password")
    assert not again.must_change_password


async def test_disabled_account_cannot_log_in(parts, db_url: str) -> None:  # type: ignore[no-untyped-def]
    accounts, _, _ = parts
    user, _ = await accounts.create_user("alice", "correct horse")
    from sqlalchemy import update

    from hub.db.engine import make_sync_engine
    from hub.db.schema import UserRow

    engine = make_sync_engine(db_url)
    with engine.begin() as conn:
        conn.execute(update(UserRow).where(UserRow.id == user.id).values(disabled=True))
    engine.dispose()
    with pytest.raises(Forbidden, match="disabled"):
        await accounts.authenticate("alice", "correct horse")


async def test_joining_a_team_creates_it_once(parts) -> None:  # type: ignore[no-untyped-def]
    accounts, _, teams = parts
    alice, _ = await accounts.create_user("alice", "correct horse")
    bob, _ = await accounts.create_user("bob", "correct horse")
    await teams.join(alice.id, "risk")
    await teams.join(bob.id, "risk")
    await teams.join(bob.id, "risk")
    assert await teams.teams_of(bob.id) == ["risk"]


async def test_a_recreated_name_never_gets_the_deleted_users_id(parts, db_url: str) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import delete

    from hub.db.engine import make_sync_engine
    from hub.db.schema import UserRow

    accounts, _, _ = parts
    first, _ = await accounts.create_user("alice", "correct horse")
    engine = make_sync_engine(db_url)
    with engine.begin() as conn:
        conn.execute(delete(UserRow).where(UserRow.id == first.id))
    engine.dispose()
    again, _ = await accounts.create_user("alice", "correct horse")
    assert again.id != first.id  # containers and volumes are keyed by id


async def test_a_password_change_ends_every_other_session_but_the_current_one(parts) -> None:  # type: ignore[no-untyped-def]
    accounts, _, _ = parts
    user, _ = await accounts.create_user("alice", "correct horse")
    here = await accounts.start_session(user, hours=12)
    thief = await accounts.start_session(user, hours=12)
    bob, _ = await accounts.create_user("bob", "correct horse")
    others = await accounts.start_session(bob, hours=12)
    await accounts.change_password(user.id, "correct horse", "a new secret", current_session=here)
    assert await accounts.session_user(thief) is None
    assert await accounts.session_user(here) == user
    assert await accounts.session_user(others) == bob


async def test_a_reset_ends_every_session_and_revokes_tokens_only_when_asked(parts) -> None:  # type: ignore[no-untyped-def]
    accounts, _, _ = parts
    user, _ = await accounts.create_user("alice", "correct horse")
    session = await accounts.start_session(user, hours=12)
    token = await accounts.create_token(user)
    await accounts.reset_password(user)
    assert await accounts.session_user(session) is None
    assert await accounts.token_grant(token) is not None
    await accounts.reset_password(user, revoke_tokens=True)
    assert await accounts.token_grant(token) is None
    assert await accounts.tokens_of(user) == []


async def test_a_revoked_tokens_id_is_never_given_to_a_new_token(parts) -> None:  # type: ignore[no-untyped-def]
    accounts, _, _ = parts
    user, _ = await accounts.create_user("alice", "correct horse")
    first = await accounts.create_token(user)
    [info] = await accounts.tokens_of(user)
    await accounts.revoke_token(user, info.id)
    assert await accounts.token_grant(first) is None
    await accounts.create_token(user)
    [again] = await accounts.tokens_of(user)
    assert again.id != info.id  # a stale id in someone's script must not hit the new token


async def test_tokens_take_the_default_expiry_unless_given_one(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        clock = StepClock()
        accounts = Accounts(SqlAccountRepo(sessions), Argon2Hasher(), clock, token_expiry_days=90)
        user, _ = await accounts.create_user("alice", "correct horse")
        default = await accounts.create_token(user)
        _, short = await accounts.issue_token(user, expires_in_days=1)
        assert [t.expires for t in await accounts.tokens_of(user)] == [
            clock.at + timedelta(days=90),
            clock.at + timedelta(days=1),
        ]
        assert short.expires == clock.at + timedelta(days=1)
        clock.at += timedelta(days=90)
        assert await accounts.token_grant(default) is None
        for bad in (0, -1, float("nan"), float("inf"), 36501):
            with pytest.raises(InvalidInput, match="expires_in"):
                await accounts.issue_token(user, expires_in_days=bad)
    finally:
        await engine.dispose()


# Over real HTTP ------------------------------------------------------------------


async def test_after_a_password_change_the_other_logins_are_refused(hub_server) -> None:  # type: ignore[no-untyped-def]
    from tests.test_web import Browser

    await hub_server.hub.deps.accounts.create_user("alice", "correct horse")
    here, thief = Browser(hub_server), Browser(hub_server)
    for browser in (here, thief):
        assert (await browser.login("alice", "correct horse")).code == 302
        assert (await browser.get("/hub/home")).code == 200
    changed = await here.post(
        "/hub/password",
        {"current": "correct horse", "new": "a new secret", "confirm": "a new secret"},
    )
    assert changed.code == 302 and changed.headers["Location"] == "/hub/home"
    assert (await here.get("/hub/home")).code == 200
    refused = await thief.get("/hub/home")
    assert refused.code == 302 and refused.headers["Location"].startswith("/hub/login")
    api = await thief.get("/hub/api/users/alice")
    assert api.code == 401


async def test_a_console_reset_may_revoke_the_users_tokens(hub_server) -> None:  # type: ignore[no-untyped-def]
    from tests.test_servers_api import Api
    from tests.test_web import Browser

    accounts = hub_server.hub.deps.accounts
    await accounts.create_user("root", "correct horse", is_admin=True)
    bob, _ = await accounts.create_user("bob", "correct horse")
    token = Api(hub_server, await accounts.create_token(bob))
    admin = Browser(hub_server)
    assert (await admin.login("root", "correct horse")).code == 302
    page = await admin.get("/hub/admin/users")
    assert b'name="revoke_tokens"' in page.body
    assert (await admin.post("/hub/admin/users/bob/reset-password", {})).code == 200
    assert (await token.call("GET", "/users/bob")).code == 200  # a plain reset keeps tokens
    reset = await admin.post("/hub/admin/users/bob/reset-password", {"revoke_tokens": "on"})
    assert reset.code == 200
    assert (await token.call("GET", "/users/bob")).code == 401
    entries = await hub_server.hub.deps.audit.page(action="user.password_reset")
    assert [e.detail.get("revoke_tokens") for e in entries] == [True, False]
