"""OpenID Connect sign-in against a small real provider running in the test, over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import jwt
import pytest
import pytest_asyncio
import tornado.httpclient
import tornado.httpserver
import tornado.testing
import tornado.web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from hub.app import build_hub
from hub.config import Settings, load_settings
from hub.domain.accounts import SCOPES
from hub.domain.errors import ConfigError, InvalidInput
from hub.domain.oidc import Flow, GroupPolicy, s256, username_from
from tests.conftest import RunningHub, listening

CLIENT_ID = "labdock-test"
CLIENT_SECRET = "s3cret-" + "x" * 40


# A small OpenID Connect provider ------------------------------------------------------------


@dataclass
class Provider:
    """Auto-approves whoever ``person`` is; ``tamper`` changes the next ID tokens' claims."""

    url: str = ""
    person: dict[str, Any] = field(
        default_factory=lambda: {"sub": "sub-alice", "preferred_username": "alice"}
    )
    tamper: dict[str, Any] = field(default_factory=dict)
    # The ID token says only who (sub); name and groups come from the userinfo endpoint.
    minimal: bool = False
    alg: str = "RS256"
    sign_with_other_key: bool = False
    key: Any = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    other_key: Any = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens_issued: int = 0

    def jwk(self) -> dict[str, Any]:
        public = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {**public, "kid": "k1", "use": "sig", "alg": "RS256"}

    def id_token(self, nonce: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
            **({"sub": self.person["sub"]} if self.minimal else self.person),
            **self.tamper,
        }
        if self.alg == "HS256":
            return jwt.encode(claims, CLIENT_SECRET, algorithm="HS256", headers={"kid": "k1"})
        key = self.other_key if self.sign_with_other_key else self.key
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})


class _Handler(tornado.web.RequestHandler):
    def initialize(self, provider: Provider) -> None:
        self.p = provider

    def json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class Discovery(_Handler):
    def get(self) -> None:
        u = self.p.url
        self.json(
            {
                "issuer": u,
                "authorization_endpoint": u + "/authorize",
                "token_endpoint": u + "/token",
                "jwks_uri": u + "/jwks",
                "userinfo_endpoint": u + "/userinfo",
                "response_types_supported": ["code"],
                "id_token_signing_alg_values_supported": ["RS256", "HS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            }
        )


class Jwks(_Handler):
    def get(self) -> None:
        self.json({"keys": [self.p.jwk()]})


class Authorize(_Handler):
    def get(self) -> None:
        arg = self.get_argument
        assert arg("client_id") == CLIENT_ID and arg("response_type") == "code"
        assert arg("code_challenge_method") == "S256" and "openid" in arg("scope").split()
        code = secrets.token_urlsafe(16)
        self.p.codes[code] = {
            "challenge": arg("code_challenge"),
            "nonce": arg("nonce"),
            "redirect_uri": arg("redirect_uri"),
        }
        query = urlencode({"code": code, "state": arg("state")})
        self.redirect(f"{arg('redirect_uri')}?{query}")


class Token(_Handler):
    def post(self) -> None:
        auth = self.request.headers.get("Authorization", "")
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if auth != f"Basic {expected}":
            return self.json({"error": "invalid_client"}, 401)
        grant = self.p.codes.pop(self.get_argument("code"), None)  # each code works once
        if grant is None:
            return self.json({"error": "invalid_grant", "error_description": "code used"}, 400)
        if self.get_argument("redirect_uri") != grant["redirect_uri"]:
            return self.json({"error": "invalid_grant", "error_description": "redirect"}, 400)
        verifier = self.get_argument("code_verifier")
        digest = hashlib.sha256(verifier.encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant["challenge"]:
            return self.json({"error": "invalid_grant", "error_description": "PKCE"}, 400)
        self.p.tokens_issued += 1
        self.json(
            {
                "access_token": "at-" + secrets.token_urlsafe(8),
                "token_type": "Bearer",
                "id_token": self.p.id_token(grant["nonce"]),
            }
        )


class UserInfo(_Handler):
    def get(self) -> None:
        if not self.request.headers.get("Authorization", "").startswith("Bearer at-"):
            return self.json({"error": "invalid_token"}, 401)
        self.json(self.p.person)


@pytest_asyncio.fixture
async def provider() -> AsyncIterator[Provider]:
    p = Provider()
    app = tornado.web.Application(
        [
            (r"/.well-known/openid-configuration", Discovery, {"provider": p}),
            (r"/jwks", Jwks, {"provider": p}),
            (r"/authorize", Authorize, {"provider": p}),
            (r"/token", Token, {"provider": p}),
            (r"/userinfo", UserInfo, {"provider": p}),
        ]
    )
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets([sock])
    p.url = f"http://127.0.0.1:{port}"
    try:
        yield p
    finally:
        server.stop()


async def serve(settings: Settings) -> AsyncIterator[RunningHub]:
    async with build_hub(settings) as built, listening(built) as running:
        yield running


@pytest_asyncio.fixture
async def hub(provider: Provider, with_settings: Any) -> AsyncIterator[RunningHub]:
    settings = with_settings(
        oidc={
            "issuer": provider.url,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "name": "Test IdP",
            "admin_groups": "hub-admins",
        }
    )
    async for running in serve(settings):
        yield running


# A browser: cookies per host, redirects followed by hand -------------------------------------


class Browser:
    def __init__(self) -> None:
        self.jars: dict[str, dict[str, str]] = {}
        self.client = tornado.httpclient.AsyncHTTPClient()

    async def get(self, url: str) -> tornado.httpclient.HTTPResponse:
        host = urlsplit(url).netloc
        jar = self.jars.setdefault(host, {})
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())} if jar else {}
        response = await self.client.fetch(
            url, headers=headers, follow_redirects=False, raise_error=False
        )
        for line in response.headers.get_list("Set-Cookie"):
            cookie = SimpleCookie()
            cookie.load(line)
            for name, morsel in cookie.items():
                gone = morsel["max-age"] == "0" or "1970" in morsel["expires"]
                if gone or not morsel.value:
                    jar.pop(name, None)
                else:
                    jar[name] = morsel.value
        return response

    async def follow(self, url: str, limit: int = 8) -> tuple[tornado.httpclient.HTTPResponse, str]:
        for _ in range(limit):
            response = await self.get(url)
            if response.code not in (301, 302, 303, 307):
                return response, url
            url = urljoin(url, response.headers["Location"])
        raise AssertionError("too many redirects")

    async def start(self, hub: RunningHub, next_url: str = "/hub/home") -> str:
        """Begin a sign-in; return the provider's redirect back to the hub (not yet followed)."""
        begin = await self.get(hub.url + "/hub/oauth_login?" + urlencode({"next": next_url}))
        assert begin.code == 302, begin.body
        at_provider = await self.get(begin.headers["Location"])
        assert at_provider.code == 302
        return str(at_provider.headers["Location"])


async def sign_in(hub: RunningHub, browser: Browser | None = None) -> tuple[Any, str, Browser]:
    browser = browser or Browser()
    callback = await browser.start(hub)
    response, where = await browser.follow(callback)
    return response, where, browser


def page_text(response: tornado.httpclient.HTTPResponse) -> str:
    import html

    return html.unescape((response.body or b"").decode())


# The flow -------------------------------------------------------------------------------------


async def test_login_page_offers_the_provider_beside_the_local_form(hub: RunningHub) -> None:
    page = await Browser().get(hub.url + "/hub/login?next=/user/alice/")
    text = page_text(page)
    assert page.code == 200 and 'name="password"' in text
    assert "Sign in with Test IdP" in text and "/hub/oauth_login?next=" in text


async def test_first_sign_in_creates_the_user_and_opens_a_session(
    hub: RunningHub, provider: Provider
) -> None:
    provider.person = {"sub": "sub-alice", "preferred_username": "Alice", "groups": ["staff"]}
    browser = Browser()
    callback = await browser.start(hub, next_url="/hub/password")
    assert callback.startswith(hub.url + "/hub/oauth_callback?")
    first = await browser.get(callback)
    assert first.code == 302 and first.headers["Location"] == "/hub/password"
    jar = browser.jars[urlsplit(hub.url).netloc]
    assert "labdock-session" in jar and "labdock-oidc" not in jar
    alice = await hub.hub.deps.accounts.get("alice")
    assert not alice.is_admin and not alice.disabled
    me = await browser.get(hub.url + "/hub/api/users/alice")
    assert me.code == 200 and json.loads(me.body)["name"] == "alice"
    # Again: the same person is the same user, found by subject, whatever the name says now.
    provider.person = {"sub": "sub-alice", "preferred_username": "renamed"}
    _, where, _ = await sign_in(hub)
    assert where.endswith("/hub/home")
    assert [u.name for u in await hub.hub.deps.accounts.all_users()] == ["admin", "alice"]


async def test_admin_groups_make_admins(hub: RunningHub, provider: Provider) -> None:
    provider.person = {"sub": "sub-root", "preferred_username": "root", "groups": ["hub-admins"]}
    response, where, _ = await sign_in(hub)
    assert where.endswith("/hub/home"), page_text(response)
    assert (await hub.hub.deps.accounts.get("root")).is_admin


async def test_name_and_groups_come_from_userinfo_when_the_id_token_lacks_them(
    hub: RunningHub, provider: Provider
) -> None:
    provider.minimal = True
    provider.person = {"sub": "sub-u", "preferred_username": "ulla", "groups": ["hub-admins"]}
    response, where, _ = await sign_in(hub)
    assert where.endswith("/hub/home"), page_text(response)
    assert (await hub.hub.deps.accounts.get("ulla")).is_admin


# Refusals -------------------------------------------------------------------------------------


async def test_wrong_state_is_refused(hub: RunningHub) -> None:
    browser = Browser()
    callback = await browser.start(hub)
    query = parse_qs(urlsplit(callback).query)
    forged = hub.url + "/hub/oauth_callback?" + urlencode({"code": query["code"][0], "state": "x"})
    response = await browser.get(forged)
    assert response.code == 400
    assert "the sign-in's state does not match" in page_text(response)
    assert "labdock-session" not in browser.jars[urlsplit(hub.url).netloc]


async def test_a_callback_without_the_flow_cookie_is_refused(hub: RunningHub) -> None:
    callback = await Browser().start(hub)
    response = await Browser().get(callback)  # another browser: no flow cookie
    assert response.code == 400
    assert "expired or began in another browser" in page_text(response)


async def test_replayed_callback_and_replayed_code_are_refused(
    hub: RunningHub, provider: Provider
) -> None:
    browser = Browser()
    callback = await browser.start(hub)
    flow_cookie = dict(browser.jars[urlsplit(hub.url).netloc])
    assert (await browser.get(callback)).code == 302
    # The same callback with the same (captured) flow cookie: the state was spent.
    thief = Browser()
    thief.jars[urlsplit(hub.url).netloc] = flow_cookie
    again = await thief.get(callback)
    assert again.code == 400 and "already used" in page_text(again)
    # The old code with a fresh flow of the attacker's own: the provider refuses it.
    fresh = Browser()
    new_callback = await fresh.start(hub)
    state = parse_qs(urlsplit(new_callback).query)["state"][0]
    old_code = parse_qs(urlsplit(callback).query)["code"][0]
    replay = hub.url + "/hub/oauth_callback?" + urlencode({"code": old_code, "state": state})
    refused = await fresh.get(replay)
    assert refused.code == 401
    assert "refused the sign-in (invalid_grant: code used)" in page_text(refused)
    assert provider.tokens_issued == 1


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ({"nonce": "not-yours"}, "nonce does not match"),
        ({"aud": "another-client"}, "issued to another client than this hub"),
        ({"aud": [CLIENT_ID, "other"], "azp": "other"}, "issued to another client than this hub"),
        ({"azp": "other"}, "issued to another client than this hub"),
        ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "has expired"),
        ({"iss": "https://evil.example"}, "Invalid issuer"),
    ],
)
async def test_bad_id_tokens_are_refused(
    hub: RunningHub, provider: Provider, tamper: dict[str, Any], message: str
) -> None:
    provider.tamper = tamper
    response, _, browser = await sign_in(hub)
    assert response.code == 401
    assert message in page_text(response)
    assert "labdock-session" not in browser.jars[urlsplit(hub.url).netloc]
    assert [u.name for u in await hub.hub.deps.accounts.all_users()] == ["admin"]


async def test_bad_signature_and_hmac_tokens_are_refused(
    hub: RunningHub, provider: Provider
) -> None:
    provider.sign_with_other_key = True
    response, _, _ = await sign_in(hub)
    assert response.code == 401 and "Signature verification failed" in page_text(response)
    provider.sign_with_other_key = False
    provider.alg = "HS256"  # signed with the client secret: anyone holding it could forge
    response, _, _ = await sign_in(hub)
    assert response.code == 401 and "'HS256', which this hub refuses" in page_text(response)


async def test_a_local_account_of_the_same_name_is_never_taken_over(
    hub: RunningHub, provider: Provider
) -> None:
    accounts = hub.hub.deps.accounts
    await accounts.create_user("alice", "correct horse")
    response, _, browser = await sign_in(hub)
    assert response.code == 409
    assert "an account named 'alice' already exists here and is not linked" in page_text(response)
    assert "labdock-session" not in browser.jars[urlsplit(hub.url).netloc]
    # Once an admin links the provider's person to the account, it signs in as that account.
    linked = await link(hub, "admin", "alice", "sub-alice")
    assert linked.code == 201, linked.body
    assert (await link(hub, "admin", "alice", "sub-alice")).code == 409
    response, where, browser = await sign_in(hub)
    assert where.endswith("/hub/home"), page_text(response)
    me = await browser.get(hub.url + "/hub/api/users/alice")
    assert me.code == 200


async def link(hub: RunningHub, actor: str, name: str, subject: str) -> Any:
    accounts = hub.hub.deps.accounts
    token = await accounts.create_token(await accounts.get(actor), scopes=SCOPES)
    return await tornado.httpclient.AsyncHTTPClient().fetch(
        f"{hub.url}/hub/api/users/{name}/oidc",
        method="POST",
        headers={"Authorization": f"token {token}"},
        body=json.dumps({"subject": subject}),
        raise_error=False,
    )


async def test_only_admins_link_sign_ins_to_accounts(hub: RunningHub) -> None:
    await hub.hub.deps.accounts.create_user("eve", "correct horse")
    refused = await link(hub, "eve", "admin", "sub-eve")  # eve holds admin:users, is no admin
    assert refused.code == 403 and "only admins" in json.loads(refused.body)["message"]
    _, where, _ = await sign_in(hub)  # sub-alice is linked to nobody: alice is created
    assert where.endswith("/hub/home")
    assert (await hub.hub.deps.accounts.get("alice")).name == "alice"


async def test_a_disabled_user_cannot_sign_in(hub: RunningHub) -> None:
    await sign_in(hub)
    accounts = hub.hub.deps.accounts
    await accounts.update(await accounts.get("alice"), disabled=True)
    response, _, browser = await sign_in(hub)
    assert response.code == 403 and "this account is disabled" in page_text(response)
    assert "labdock-session" not in browser.jars[urlsplit(hub.url).netloc]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("\u212aate", "has characters beyond plain ASCII"),
        ("-dash", "cannot be used here"),
        ("x" * 40, "cannot be used here"),
        (None, "the provider did not send a username"),
    ],
)
async def test_usernames_that_do_not_normalize_cleanly_are_refused(
    hub: RunningHub, provider: Provider, name: Any, message: str
) -> None:
    provider.person = {"sub": "sub-k", "preferred_username": name}
    response, _, _ = await sign_in(hub)
    assert response.code == 400 and message in page_text(response)
    assert [u.name for u in await hub.hub.deps.accounts.all_users()] == ["admin"]


async def test_allowed_groups_keep_others_out(provider: Provider, with_settings: Any) -> None:
    settings = with_settings(
        oidc={
            "issuer": provider.url,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "allowed_groups": "analysts, quants",
        }
    )
    async for hub in serve(settings):
        provider.person = {"sub": "s1", "preferred_username": "mallory", "groups": ["sales"]}
        response, _, _ = await sign_in(hub)
        assert response.code == 403
        assert "not in a group allowed to use this hub (analysts, quants)" in page_text(response)
        provider.person = {"sub": "s2", "preferred_username": "quinn", "groups": ["quants"]}
        _, where, _ = await sign_in(hub)
        assert where.endswith("/hub/home")


async def test_without_oidc_there_is_no_button_and_no_route(hub_server: RunningHub) -> None:
    page = await Browser().get(hub_server.url + "/hub/login")
    assert "Sign in with" not in page_text(page)
    assert (await Browser().get(hub_server.url + "/hub/oauth_login")).code == 404


async def test_unreachable_provider_is_a_clear_503(with_settings: Any) -> None:
    sock, port = tornado.testing.bind_unused_port()
    sock.close()  # nothing listens there
    settings = with_settings(
        oidc={"issuer": f"http://127.0.0.1:{port}", "client_id": CLIENT_ID, "client_secret": "s"}
    )
    async for hub in serve(settings):
        response = await Browser().get(hub.url + "/hub/oauth_login")
        assert response.code == 503
        assert "cannot reach the sign-in provider" in page_text(response)


# Pure rules -----------------------------------------------------------------------------------


def test_pkce_challenge_is_rfc7636_s256() -> None:
    # RFC 7636, appendix B.
    verifier = "dBjftJeZ4CVP-mJ92K9qkdNWhO4DPAb7Tb_9aRXmH5w"
    digest = hashlib.sha256(verifier.encode()).digest()
    assert s256(verifier) == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    flow = Flow.start("/hub/home")
    assert 43 <= len(flow.verifier) <= 128 and flow.state != flow.nonce
    assert Flow.loads(flow.dumps()) == flow
    assert Flow.loads('{"state": 1}') is None and Flow.loads("not json") is None


def test_username_mapping_lowercases_ascii_only() -> None:
    assert username_from("Alice.Smith", "preferred_username") == "alice.smith"
    with pytest.raises(InvalidInput, match="beyond plain ASCII"):
        username_from("\uff41lice", "preferred_username")  # fullwidth a


def test_group_policy() -> None:
    policy = GroupPolicy(allowed=frozenset({"a"}), admins=frozenset({"ops"}))
    policy.check(frozenset({"a", "b"}), "IdP")
    assert policy.is_admin(frozenset({"ops"})) is True
    assert GroupPolicy().is_admin(frozenset({"ops"})) is None


def test_oidc_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"oidc\.issuer: must be an https:// URL"):
        load_settings(
            env={"LABDOCK_OIDC_ISSUER": "http://id.example.org", "LABDOCK_OIDC_CLIENT_ID": "x"}
        )
    with pytest.raises(ConfigError, match=r"oidc\.client_id: required"):
        load_settings(env={"LABDOCK_OIDC_ISSUER": "https://id.example.org"})
    ok = load_settings(
        env={"LABDOCK_OIDC_ISSUER": "https://id.example.org", "LABDOCK_OIDC_CLIENT_ID": "hub"}
    )
    assert ok.oidc.username_claim == "preferred_username"
