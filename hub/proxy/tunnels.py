"""Tunnels and streams open through the proxy, closed within seconds of their grant ending.

    tunnels = Tunnels(accounts, routes)        # hooks routes.on_remove itself
    tunnel = tunnels.open(("session", sid), user_id=7, route=route, close=cut)  # on a 101
    ...
    tunnels.done(tunnel)                       # it ended by itself
    tunnels.revoke_user(7)                     # at once, for a process that knows
    await tunnels.close()                      # when the hub closes

Once a WebSocket is upgraded, or a response body streams on, the proxy passes
bytes without judging them again, so the check made at the request is not
enough: a terminal opened by a user who is then disabled would keep running
commands. Each such connection is kept here with the subject (API token or
browser session) and the route it was let through for. While any are open, a
sweep every ``interval`` seconds (1 s) asks the DB again about each distinct
subject, bypassing ``ProxyAuth``'s cache, since a revocation may come from
another process (the CLI), and closes the connections whose grant is gone
(logged out, session ended by a password change, user disabled, token revoked
or expired), no longer holds ``access:servers``, or may no longer reach the
route (``hub.domain.access.route_refusal``: an admin demoted, a share withdrawn). A route
that is removed (its server stopped) or moved to another target closes its
connections at once, as do ``revoke_user`` and ``revoke_subject``. The bound
is therefore ``interval`` plus one DB round trip: under 2 s by default.

The registry costs nothing per request: it is touched only when a connection
upgrades or a body streams past its first piece, and the sweep runs only while
something is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from hub.domain.access import route_refusal
from hub.domain.accounts import Accounts, User
from hub.domain.routes import Route, RouteTable
from hub.proxy.auth import Subject, look_up

log = logging.getLogger(__name__)

# DB look-ups one sweep runs at once: enough to sweep many users quickly, few
# enough to leave the connection pool to the hub's own requests.
_CONCURRENT_LOOKUPS = 8


class Tunnel:
    """One open connection: whom it was let through for, and how to end it."""

    __slots__ = ("_close", "route", "subject", "user_id")

    def __init__(
        self, subject: Subject, user_id: int, route: Route, close: Callable[[], None]
    ) -> None:
        self.subject = subject
        self.user_id = user_id
        self.route = route
        self._close = close


class Tunnels:
    """The registry of open tunnels and streams, and the sweep that ends revoked ones."""

    def __init__(
        self,
        accounts: Accounts,
        routes: RouteTable,
        *,
        interval: float = 1.0,
        on_revoke: Callable[[int], None] | None = None,
    ) -> None:
        """``on_revoke(user_id)`` is told of each user whose connection was closed
        (``ProxyAuth.forget_user``, so that their next request is looked up again)."""
        self._accounts = accounts
        self._routes = routes
        self.interval = interval
        self._on_revoke = on_revoke
        self._by_subject: dict[Subject, set[Tunnel]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        routes.on_remove(self.route_removed)

    def open(
        self, subject: Subject, *, user_id: int, route: Route, close: Callable[[], None]
    ) -> Tunnel:
        """Watch a connection from now on; ``close()`` ends it when its grant goes."""
        tunnel = Tunnel(subject, user_id, route, close)
        self._by_subject.setdefault(subject, set()).add(tunnel)
        if not self._closed and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tunnels")
        return tunnel

    def done(self, tunnel: Tunnel) -> None:
        """The connection ended by itself: stop watching it."""
        tunnels = self._by_subject.get(tunnel.subject)
        if tunnels is not None:
            tunnels.discard(tunnel)
            if not tunnels:
                del self._by_subject[tunnel.subject]

    def revoke_user(self, user_id: int) -> int:
        """Close every connection of a user now (disabled, say); return how many."""
        if self._on_revoke is not None:
            self._on_revoke(user_id)
        return self._end_where(lambda tunnel: tunnel.user_id == user_id)

    def revoke_subject(self, subject: Subject) -> int:
        """Close every connection let through for one session or token now."""
        return self._end_where(lambda tunnel: tunnel.subject == subject)

    def revoke_session(self, session_id: str) -> int:
        """Close the connections of one browser session now (logged out)."""
        return self.revoke_subject(("session", session_id))

    def revoke_token(self, token: str) -> int:
        """Close the connections made with one API token now (revoked)."""
        return self.revoke_subject(("token", token))

    def route_removed(self, route: Route) -> None:
        """A server's route went (stopped, removed, moved): close its connections."""
        self._end_where(
            lambda tunnel: (
                tunnel.route.server_id == route.server_id and tunnel.route.target == route.target
            )
        )

    def __len__(self) -> int:
        return sum(len(tunnels) for tunnels in self._by_subject.values())

    async def sweep(self) -> None:
        """Ask the DB about every subject with open connections; close those revoked."""
        limit = asyncio.Semaphore(_CONCURRENT_LOOKUPS)

        async def check(subject: Subject) -> None:
            async with limit:
                try:
                    found = await look_up(self._accounts, subject)
                except Exception as exc:
                    # The DB is down: a revocation cannot have been written either.
                    log.warning("re-checking an open connection's grant failed: %s", exc)
                    return
            for tunnel in list(self._by_subject.get(subject, ())):
                if not self._still_allowed(tunnel, found):
                    self._end(tunnel)
                    if self._on_revoke is not None:
                        self._on_revoke(tunnel.user_id)

        await asyncio.gather(*(check(subject) for subject in list(self._by_subject)))

    async def close(self) -> None:
        """Stop sweeping and close whatever is still open (the hub is closing)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._end_where(lambda tunnel: True)

    def _still_allowed(self, tunnel: Tunnel, found: tuple[User, frozenset[str]] | None) -> bool:
        if found is None:
            return False
        user, scopes = found
        if user.id != tunnel.user_id:
            return False
        current = self._routes.get(tunnel.route.server_id)
        if current is None or current.target != tunnel.route.target:
            return False
        tunnel.route = current  # re-added as it was (the hub's reconcile does): the same server
        admin_access = self._routes.admin_access
        return route_refusal(current, user, scopes, admin_access=admin_access) is None

    def _end_where(self, matches: Callable[[Tunnel], bool]) -> int:
        ended = [t for tunnels in self._by_subject.values() for t in tunnels if matches(t)]
        for tunnel in ended:
            self._end(tunnel)
        return len(ended)

    def _end(self, tunnel: Tunnel) -> None:
        self.done(tunnel)
        try:
            tunnel._close()
        except Exception:
            log.exception("closing a revoked connection failed")

    async def _run(self) -> None:
        # Ends with the last connection; ``open`` starts it again with the next one.
        while self._by_subject:
            await asyncio.sleep(self.interval)
            if not self._by_subject:
                break
            try:
                await self.sweep()
            except Exception:
                log.exception("the sweep of open connections failed")
