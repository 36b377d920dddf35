"""This hub as an OpenID Connect client: discovery, token exchange, and ID token checks.

    login = OidcLogin(settings.oidc, identities)
    meta = await login.metadata()
    url = login.authorize_url(meta, Flow.start("/hub/home"), redirect_uri)
    user, created = await login.finish(code, flow, redirect_uri)

The authorization-code flow with PKCE (S256). The ID token must be signed by a
key from the provider's JWKS with an asymmetric algorithm the provider
announces (RS256 at least; never ``none`` or HMAC), and name this hub's client
as audience, the configured issuer, an unexpired time and our nonce. Discovery
comes from ``<issuer>/.well-known/openid-configuration`` and is kept an hour;
keys are fetched again when a token names an unknown one. The handlers of the
two legs of the flow are in ``hub.web.oidc``.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import jwt
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse

from hub.domain.accounts import User
from hub.domain.errors import BackendUnavailable, InvalidInput, Unauthorized
from hub.domain.oidc import (
    Flow,
    GroupPolicy,
    OidcIdentities,
    OidcSettings,
    Person,
    claims_subject,
    groups_from,
    split_list,
)

log = logging.getLogger(__name__)

# Asymmetric algorithms only: HMAC would make the client secret a signing key.
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_KTY = {"R": "RSA", "P": "RSA", "E": "EC"}
FLOW_SECONDS = 600
DISCOVERY_TTL = 3600.0
KEYS_REFRESH_S = 30.0
LEEWAY_S = 60
HTTP_TIMEOUT = 10.0


@dataclass(frozen=True)
class ProviderMetadata:
    """What discovery told us about the provider."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    algorithms: frozenset[str]
    basic_auth: bool


def _check_url(url: object, what: str) -> str:
    """An https URL (http only on this machine), or a refusal naming the field."""
    if not isinstance(url, str):
        raise BackendUnavailable(f"the sign-in provider's discovery has no {what}")
    parts = urlsplit(url)
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise BackendUnavailable(f"the sign-in provider's {what} is not an https URL: {url!r}")
    return url


def _kty_of(alg: str) -> str:
    return "OKP" if alg == "EdDSA" else _KTY[alg[0]]


class OidcLogin:
    """The provider as this hub talks to it: discovery, token exchange, ID token checks."""

    def __init__(
        self,
        settings: OidcSettings,
        identities: OidcIdentities,
        *,
        http: AsyncHTTPClient | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.identities = identities
        self._http = http or AsyncHTTPClient()
        self._monotonic = monotonic
        self._lock = asyncio.Lock()
        self._metadata: tuple[float, ProviderMetadata] | None = None
        self._keys: list[dict[str, Any]] = []
        self._keys_at = -KEYS_REFRESH_S
        self._spent: dict[str, float] = {}
        self.policy = GroupPolicy(
            allowed=split_list(settings.allowed_groups), admins=split_list(settings.admin_groups)
        )

    @property
    def issuer(self) -> str:
        return self.settings.issuer.rstrip("/")

    @property
    def display_name(self) -> str:
        """The provider's name on the login button."""
        return self.settings.name or urlsplit(self.settings.issuer).hostname or "your provider"

    # Talking to the provider -------------------------------------------------------------

    async def _fetch(self, url: str, what: str, **kwargs: Any) -> HTTPResponse:
        try:
            return await self._http.fetch(
                url, request_timeout=HTTP_TIMEOUT, raise_error=False, **kwargs
            )
        except (OSError, HTTPClientError) as exc:
            raise BackendUnavailable(
                f"cannot reach the sign-in provider for its {what} ({exc}); try again later, "
                "or log in with a local account"
            ) from exc

    async def _json(self, response: HTTPResponse, what: str) -> dict[str, Any]:
        if response.code == 599:
            raise BackendUnavailable(
                f"cannot reach the sign-in provider for its {what}; try again later, "
                "or log in with a local account"
            )
        try:
            body = json.loads(response.body or b"")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise BackendUnavailable(
                f"the sign-in provider's {what} is not JSON (HTTP {response.code})"
            )
        return body

    async def metadata(self) -> ProviderMetadata:
        """The provider's discovery document, fetched at most once an hour."""
        async with self._lock:
            now = self._monotonic()
            if self._metadata is not None and now - self._metadata[0] < DISCOVERY_TTL:
                return self._metadata[1]
            url = self.issuer + "/.well-known/openid-configuration"
            doc = await self._json(await self._fetch(url, "discovery"), "discovery")
            if doc.get("issuer") != self.settings.issuer:
                raise BackendUnavailable(
                    f"the sign-in provider says its issuer is {doc.get('issuer')!r}, "
                    f"not the configured {self.settings.issuer!r}"
                )
            announced = doc.get("id_token_signing_alg_values_supported") or ["RS256"]
            algorithms = frozenset(a for a in announced if a in ALGORITHMS)
            if not algorithms:
                raise BackendUnavailable(
                    f"the sign-in provider signs ID tokens only with {announced}; "
                    f"labdock accepts {', '.join(sorted(ALGORITHMS))}"
                )
            methods = doc.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
            meta = ProviderMetadata(
                issuer=str(doc["issuer"]),
                authorization_endpoint=_check_url(
                    doc.get("authorization_endpoint"), "authorization_endpoint"
                ),
                token_endpoint=_check_url(doc.get("token_endpoint"), "token_endpoint"),
                jwks_uri=_check_url(doc.get("jwks_uri"), "jwks_uri"),
                userinfo_endpoint=(
                    _check_url(doc["userinfo_endpoint"], "userinfo_endpoint")
                    if doc.get("userinfo_endpoint")
                    else None
                ),
                algorithms=algorithms,
                basic_auth="client_secret_basic" in methods,
            )
            self._metadata = (now, meta)
            return meta

    async def _signing_keys(self, meta: ProviderMetadata, *, refresh: bool) -> list[dict[str, Any]]:
        now = self._monotonic()
        # Refetch on an unknown key id, but not more than once in KEYS_REFRESH_S.
        if not self._keys or (refresh and now - self._keys_at >= KEYS_REFRESH_S):
            doc = await self._json(await self._fetch(meta.jwks_uri, "keys"), "keys")
            keys = doc.get("keys")
            if not isinstance(keys, list):
                raise BackendUnavailable("the sign-in provider's key set has no keys")
            self._keys = [k for k in keys if isinstance(k, dict)]
            self._keys_at = now
        return self._keys

    def authorize_url(self, meta: ProviderMetadata, flow: Flow, redirect_uri: str) -> str:
        """Where to send the browser to sign in."""
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.settings.client_id,
                "redirect_uri": redirect_uri,
                "scope": self.settings.scopes,
                "state": flow.state,
                "nonce": flow.nonce,
                "code_challenge": flow.challenge,
                "code_challenge_method": "S256",
            }
        )
        sep = "&" if urlsplit(meta.authorization_endpoint).query else "?"
        return meta.authorization_endpoint + sep + query

    async def _exchange(
        self, meta: ProviderMetadata, code: str, flow: Flow, redirect_uri: str
    ) -> dict[str, Any]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": flow.verifier,
        }
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        client_id, secret = self.settings.client_id, self.settings.client_secret
        if secret and meta.basic_auth:
            pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = client_id
            if secret:
                form["client_secret"] = secret
        response = await self._fetch(
            meta.token_endpoint,
            "token endpoint",
            method="POST",
            headers=headers,
            body=urlencode(form),
            follow_redirects=False,
        )
        body = await self._json(response, "token endpoint")
        if response.code != 200:
            error = str(body.get("error", "error"))[:64]
            detail = str(body.get("error_description", ""))[:200]
            raise Unauthorized(
                f"the sign-in provider refused the sign-in ({error}"
                + (f": {detail}" if detail else "")
                + "); start again from the login page"
            )
        if not isinstance(body.get("id_token"), str):
            raise Unauthorized("the sign-in provider sent no ID token; is 'openid' in oidc.scopes?")
        return body

    @staticmethod
    def _pick(keys: list[dict[str, Any]], kid: object, alg: str) -> list[dict[str, Any]]:
        """The provider's keys that could have signed: by kid when the token names one."""
        return [
            k
            for k in keys
            if k.get("kty") == _kty_of(alg)
            and k.get("use", "sig") == "sig"
            and k.get("alg", alg) == alg
            and (kid is None or k.get("kid") == kid)
        ]

    def _decode(self, id_token: str, jwk: dict[str, Any], alg: str, issuer: str) -> dict[str, Any]:
        key = jwt.PyJWK(jwk, algorithm=alg)
        claims: dict[str, Any] = jwt.decode(
            id_token,
            key=key.key,
            algorithms=[alg],
            audience=self.settings.client_id,
            issuer=issuer,
            leeway=LEEWAY_S,
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )
        return claims

    async def verify(self, meta: ProviderMetadata, id_token: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims once its signature, issuer, audience, times and nonce hold."""
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the ID token is malformed: {exc}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in meta.algorithms:
            raise Unauthorized(f"the ID token is signed with {alg!r}, which this hub refuses")
        kid = header.get("kid")
        candidates = self._pick(await self._signing_keys(meta, refresh=False), kid, alg)
        if not candidates:
            candidates = self._pick(await self._signing_keys(meta, refresh=True), kid, alg)
        if not candidates:
            raise Unauthorized(f"no key of the sign-in provider matches the ID token (kid {kid!r})")
        try:
            for jwk in candidates[:-1]:  # without a kid, any of the keys may have signed
                try:
                    claims = self._decode(id_token, jwk, alg, meta.issuer)
                    break
                except jwt.InvalidSignatureError:
                    continue
            else:
                claims = self._decode(id_token, candidates[-1], alg, meta.issuer)
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the ID token has expired; sign in again") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("the ID token was issued to another client than this hub") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the ID token is not valid: {exc}") from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != self.settings.client_id:
            raise Unauthorized("the ID token was issued to another client than this hub")
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(token_nonce, nonce):
            raise Unauthorized("the ID token's nonce does not match this sign-in; start again")
        return claims

    async def _userinfo(
        self, meta: ProviderMetadata, access_token: object, subject: str
    ) -> dict[str, Any]:
        if meta.userinfo_endpoint is None or not isinstance(access_token, str):
            return {}
        response = await self._fetch(
            meta.userinfo_endpoint,
            "userinfo",
            headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
        )
        if response.code != 200:
            return {}
        info = await self._json(response, "userinfo")
        # Claims about someone else must never be mixed in (OIDC Core 5.3.2).
        return info if info.get("sub") == subject else {}

    def spend(self, state: str) -> None:
        """Accept each state once; a replayed callback is refused."""
        now = self._monotonic()
        self._spent = {s: t for s, t in self._spent.items() if now - t < FLOW_SECONDS}
        if state in self._spent:
            raise InvalidInput("this sign-in was already used; start again from the login page")
        self._spent[state] = now

    async def finish(self, code: str, flow: Flow, redirect_uri: str) -> tuple[User, bool]:
        """Exchange the code, check the ID token, and find or create the local user."""
        meta = await self.metadata()
        tokens = await self._exchange(meta, code, flow, redirect_uri)
        claims = await self.verify(meta, tokens["id_token"], flow.nonce)
        subject = claims_subject(claims)
        wanted = (self.settings.username_claim, self.settings.groups_claim)
        if any(name not in claims for name in wanted):
            extra = await self._userinfo(meta, tokens.get("access_token"), subject)
            claims = {**extra, **claims}
        person = Person(
            subject=subject,
            username=claims.get(self.settings.username_claim),
            groups=groups_from(claims.get(self.settings.groups_claim)),
        )
        return await self.identities.sign_in(
            meta.issuer,
            person,
            policy=self.policy,
            provider=self.display_name,
            username_claim=self.settings.username_claim,
        )
