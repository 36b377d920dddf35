"""The front's wiring: a ``FrontProxy`` (``hub.proxy.fast``) built from the hub's settings.

    front = front_proxy(deps, routes, activity, hub="unix:/run/labdock/hub.sock",
                        cookie_secret=secret)
    await front.listen("127.0.0.1", 8000)
    proxy_routes(deps, routes, activity, tunnels=front.config.tunnels)   # one registry

Also the page the proxy answers with itself (server not running, refusals),
shared with ``hub.web.proxy.ProxyHandler`` so that both paths answer alike.
"""

from __future__ import annotations

import json
from http.client import responses
from urllib.parse import urlsplit

from jinja2 import Template

from hub.domain.accounts import User
from hub.domain.activity import ActivityTracker
from hub.domain.routes import RouteTable
from hub.proxy.auth import ProxyAuth
from hub.proxy.fast import FrontProxy
from hub.proxy.pool import ConnectionPool
from hub.proxy.relay import FrontConfig, Refuse
from hub.proxy.tunnels import Tunnels
from hub.proxy.user_hosts import UserHosts
from hub.web.deps import WebDeps

CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'"

PAGE = """{% extends "base.html" %}
{% block title %}{{ title }} · labdock{% endblock %}
{% block main %}
<section class="card narrow">
  <h1>{{ title }}</h1>
  <p>{{ message }}</p>
  {% if start %}<p><a class="button" href="/hub/home">Start it from your home page</a></p>
  {% else %}<p><a href="/hub/home">Back to labdock</a></p>{% endif %}
</section>
{% endblock %}
"""


def front_proxy(
    deps: WebDeps,
    routes: RouteTable,
    activity: ActivityTracker,
    *,
    hub: str,
    cookie_secret: bytes,
    pool: ConnectionPool | None = None,
    auth_ttl: float = 2.0,
    hosts: UserHosts | None = None,
) -> FrontProxy:
    """The fast path in front of the hub's handlers (see ``hub.proxy.fast``).

    ``hub`` is where the tornado application listens for what the front does
    not answer itself (``unix:/path``); that listener must trust ``X-Real-Ip``
    (``xheaders=True``) and nothing but the front may reach it. Logging out,
    revoking a token or changing a password takes effect on the fast path
    within ``auth_ttl`` seconds for new requests, and within 2 s for open
    WebSockets and streams (``front.config.tunnels``, to share with
    ``proxy_routes``). ``hub.request_head_timeout`` and
    ``hub.max_connections_per_client`` bound slow and piled-up connections.
    With ``hosts`` (subdomain mode), ``/user/`` paths pass only on their
    owner's host (``hub.proxy.user_hosts``).
    """
    hub_settings = deps.settings
    public = urlsplit(hub_settings.public_url)
    auth = ProxyAuth(
        deps.accounts,
        cookie_secret=cookie_secret,
        session_cookie=deps.session_cookie,
        max_age_days=hub_settings.session_hours / 24 + 1,
        ttl=auth_ttl,
        hosts=hosts,
    )
    host_cookies = {hosts.cookie, hosts.state_cookie} if hosts is not None else set()
    config = FrontConfig(
        routes=routes,
        activity=activity,
        auth=auth,
        hub=hub,
        refuse=_front_refusal(deps.templates.from_string(PAGE)),
        public_origin=f"{public.scheme}://{public.netloc}".lower() if public.netloc else "",
        public_scheme=public.scheme if public.netloc else "",
        hub_cookies=frozenset({deps.session_cookie, "_xsrf", *host_cookies}),
        head_timeout=hub_settings.request_head_timeout,
        max_connections_per_client=hub_settings.max_connections_per_client,
        tunnels=Tunnels(deps.accounts, routes, on_revoke=auth.forget_user),
    )
    return FrontProxy(config, pool if pool is not None else ConnectionPool())


def _front_refusal(page: Template) -> Refuse:
    """The front's own error answers: the same page, or JSON, as ``ProxyHandler._refuse``."""

    def refuse(status: int, message: str, wants_html: bool, user: User | None) -> bytes:
        reason = responses.get(status, "Error")
        if wants_html:
            body = page.render(
                title=f"{status} {reason}",
                message=message,
                start=False,
                user=user,
                xsrf_form_html="",
                static_url=lambda path: "/hub/static/" + path,
            ).encode()
            kind = f"text/html; charset=UTF-8\r\nContent-Security-Policy: {CSP}"
        else:
            body = json.dumps({"status": status, "message": message}).encode()
            kind = "application/json; charset=UTF-8"
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
            "X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        return head.encode() + body

    return refuse
