"""The admin console: users, teams and quotas, servers, and the audit log.

GET  /hub/admin/users                      everyone, with create / disable / reset / admin
POST /hub/admin/users                      create a user (one-time password shown once)
POST /hub/admin/users/bob/disable          or enable, reset-password, make-admin, ...
GET  /hub/admin/teams                      quotas beside current use; create a team
POST /hub/admin/quotas/teams/risk          set a team's (or a user's) limits
GET  /hub/admin/servers                    every server; live use from /hub/api/stats
POST /hub/admin/servers/42/stop            or remove
GET  /hub/admin/audit?action=login&actor=  newest first, filtered, paginated

Only admins get in (others get a 403 page; visitors go to the login page).
Every form carries the XSRF token, cross-origin posts are refused even with
one, and every action lands in the audit log.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from hub.domain.accounts import User, check_team_name
from hub.domain.errors import Forbidden, InvalidInput, LabdockError, NotFound
from hub.domain.quota_admin import QuotaStanding, quota_kind
from hub.domain.records import ACTIVE_STATES, ServerRecord
from hub.domain.resources import format_memory, parse_memory
from hub.web.admin_api import update_user
from hub.web.base import BaseHandler, status_for
from hub.web.deps import WebDeps

FLASH_COOKIE = "labdock-admin-flash"
QUOTA_FIELDS = ("cpus", "memory", "gpus", "servers", "storage")
QUOTA_LABELS = {
    "cpus": "CPUs",
    "memory": "Memory",
    "gpus": "GPUs",
    "servers": "Servers at once",
    "storage": "Storage",
}
SIZES = frozenset({"memory", "storage"})
AUDIT_PAGE = 50
USER_ACTIONS = ("disable", "enable", "reset-password", "make-admin", "unmake-admin", "teams")


def show_amount(field: str, value: float | int | None) -> str:
    """A quota amount as people read it: ``8 GiB``, ``2.5``, or an em dash when unknown."""
    if value is None:
        return "—"
    if field in SIZES:
        return format_memory(int(value))
    return f"{value:g}"


def form_amount(field: str, value: float | int | None) -> str:
    """A quota amount as the editor's input shows it (``8G``; empty means no limit)."""
    if value is None:
        return ""
    if field in SIZES:
        return show_amount(field, value).replace(" ", "").removesuffix("iB").removesuffix("B")
    return f"{value:g}"


def parse_quota_form(form: dict[str, str]) -> dict[str, float | int | None]:
    """The editor's five fields: a number or size each, or empty to lift the limit."""
    limits: dict[str, float | int | None] = {}
    for field in QUOTA_FIELDS:
        raw = form.get(field, "").strip()
        if not raw:
            limits[field] = None
            continue
        if field in SIZES:
            limits[field] = parse_memory(raw, what=field)
            continue
        try:
            number = float(raw)
        except ValueError:
            raise InvalidInput(f"{field}: expected a number, got {raw[:20]!r}") from None
        if number < 0 or number != number or number == float("inf"):
            raise InvalidInput(f"{field}: must be zero or more")
        if field == "cpus":
            limits[field] = number
        elif number != int(number):
            raise InvalidInput(f"{field}: expected a whole number")
        else:
            limits[field] = int(number)
    return limits


def team_names(raw: str) -> list[str]:
    """``risk, ml`` → ``["ml", "risk"]``, each checked like a username."""
    names = sorted({n for n in re.split(r"[,\s]+", raw.strip()) if n})
    for name in names:
        check_team_name(name)
    return names


def quota_rows(standing: QuotaStanding) -> list[dict[str, Any]]:
    """One row per limit for the editor: the limit, what is used, and a meter's numbers."""
    rows = []
    for field in QUOTA_FIELDS:
        limit, use = getattr(standing.limits, field), getattr(standing.used, field)
        rows.append(
            {
                "field": field,
                "label": QUOTA_LABELS[field],
                "value": form_amount(field, limit),
                "limit": show_amount(field, limit) if limit is not None else "no limit",
                "used": show_amount(field, use),
                "meter": limit is not None and use is not None and limit > 0,
                "use_value": use or 0,
                "limit_value": limit or 0,
                "over": limit is not None and use is not None and use > limit,
            }
        )
    return rows


def ago(at: datetime | None, now: datetime) -> str:
    """``3 min ago``, ``2 h ago``, ``5 days ago``, or ``never``."""
    if at is None:
        return "never"
    seconds = max(0, int((now - at).total_seconds()))
    for size, unit in ((86400, "days"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return "just now"


@dataclass(frozen=True)
class Flash:
    """A one-shot message shown after a redirect."""

    ok: bool
    text: str


class AdminPage(BaseHandler):
    """The shared base: admins only, same-origin posts, flash messages, audit records."""

    section = "users"

    async def prepare(self) -> None:
        await super().prepare()
        if self.request.method not in ("GET", "HEAD"):
            self._refuse_cross_site()
        if self.user is None:
            target = self.request.uri if self.request.method == "GET" else "/hub/admin"
            self.redirect(self.login_url_for(target or "/hub/admin"))
            return
        if self.user.must_change_password:
            self.redirect("/hub/password")
            return
        if not self.user.is_admin:
            raise Forbidden("the admin console is for admins only")

    def _refuse_cross_site(self) -> None:
        # The XSRF token already stops forgeries; this also refuses a stolen token's use
        # from another origin, and says why in the audit log.
        site = self.request.headers.get("Sec-Fetch-Site", "")
        origin = self.request.headers.get("Origin", "")
        if site == "cross-site" or (
            origin and origin != "null" and urlsplit(origin).netloc != self.request.host
        ):
            raise Forbidden("cross-site requests to the admin console are refused")
        if origin == "null":
            raise Forbidden("requests from an opaque origin are refused")

    def admin(self, scope: str = "admin:users") -> User:
        """The acting admin, or 403: the console is for admins, holding ``scope``."""
        user = self.user
        if user is None or not user.is_admin:  # prepare() refused them already
            raise Forbidden("the admin console is for admins only")
        if scope not in self.scopes:
            raise Forbidden(f"this token lacks the {scope!r} scope")
        return user

    def flash(self, text: str, *, ok: bool = True) -> None:
        value = json.dumps({"ok": ok, "text": text[:500]})
        self.set_signed_cookie(
            FLASH_COOKIE,
            value,
            expires_days=None,
            httponly=True,
            samesite="Strict",
            secure=self.deps.secure_cookies,
            path="/hub/admin",
        )

    def take_flash(self) -> Flash | None:
        raw = self.get_signed_cookie(FLASH_COOKIE, max_age_days=1 / 24)
        if raw is None:
            return None
        self.clear_cookie(FLASH_COOKIE, path="/hub/admin")
        try:
            data = json.loads(raw)
            return Flash(ok=bool(data["ok"]), text=str(data["text"]))
        except (ValueError, KeyError, TypeError):
            return None

    def done(self, text: str, to: str) -> None:
        """After a change: a message for the next page, and a redirect (so reload is safe)."""
        self.flash(text)
        self.redirect(to)

    async def audit(self, actor: User, action: str, target: str, **detail: Any) -> None:
        await self.deps.audit.record(actor_id=actor.id, action=action, target=target, detail=detail)

    def render_admin(self, name: str, status: int = 200, **context: Any) -> None:
        self.set_status(status)
        self.set_header("Cache-Control", "no-store")
        context.setdefault("flash", None)
        context.setdefault("error", None)
        self.render_page(name, section=self.section, **context)


class UsersPage(AdminPage):
    """``/hub/admin`` and ``/hub/admin/users``: the users, and creating one."""

    async def get(self) -> None:
        self.admin()
        await show_users(self, flash=self.take_flash())

    async def post(self) -> None:
        actor = self.admin()
        form = {
            "name": self.get_argument("name", "").strip(),
            "teams": self.get_argument("teams", ""),
            "admin": self.get_argument("admin", ""),
        }
        try:
            teams = team_names(form["teams"])
            user, password = await self.deps.accounts.create_user(
                form["name"], is_admin=bool(form["admin"])
            )
        except LabdockError as exc:
            await show_users(self, status=status_for(exc), error=exc.message, form=form)
            return
        for team in teams:
            await self.deps.teams.join(user.id, team)
        await self.audit(actor, "user.create", user.name, admin=user.is_admin, teams=teams)
        await show_users(
            self,
            status=201,
            secret={"name": user.name, "password": password, "created": True},
        )


async def show_users(page: AdminPage, status: int = 200, **context: Any) -> None:
    users = await page.deps.accounts.all_users()
    teams = await page.deps.teams.all_teams()
    records = await page.deps.servers.all()
    running = Counter(r.user_id for r in records if r.state in ACTIVE_STATES)
    teams_of: dict[str, list[str]] = {}
    for team in teams:
        for member in team.members:
            teams_of.setdefault(member, []).append(team.name)
    now = datetime.now(UTC)
    rows = [
        {
            "user": u,
            "teams": teams_of.get(u.name, []),
            "servers": running.get(u.id, 0),
            "last_login": ago(u.last_login, now),
            "last_login_at": u.last_login.isoformat() if u.last_login else "",
        }
        for u in users
    ]
    context.setdefault("form", {"name": "", "teams": "", "admin": ""})
    page.render_admin(
        "admin_users.html",
        status,
        rows=rows,
        team_names=[t.name for t in teams],
        **context,
    )


class UserActionPage(AdminPage):
    """``POST /hub/admin/users/{name}/{action}``: disable, enable, reset, admin, teams."""

    async def post(self, name: str, action: str) -> None:
        actor = self.admin()
        try:
            if action not in USER_ACTIONS:
                raise NotFound(f"no action {action!r}")
            target = await self.deps.accounts.get(name)
            await self.act(actor, target, action)
        except LabdockError as exc:
            await show_users(self, status=status_for(exc), error=exc.message)

    async def act(self, actor: User, target: User, action: str) -> None:
        accounts = self.deps.accounts
        if action in ("disable", "enable"):
            if target.id == actor.id:
                raise InvalidInput("you cannot disable yourself")
            await update_user(self.deps, target, disabled=action == "disable")
            await self.audit(actor, "user.update", target.name, disabled=action == "disable")
            self.done(f"{target.name} is {action}d.", "/hub/admin/users")
        elif action in ("make-admin", "unmake-admin"):
            if not actor.is_admin:  # admin() refused them already; this rule must not slip
                raise Forbidden("only admins may make or unmake admins")
            await accounts.update(target, is_admin=action == "make-admin")
            await self.audit(actor, "user.update", target.name, admin=action == "make-admin")
            what = "now an admin" if action == "make-admin" else "no longer an admin"
            if target.id == actor.id and action == "unmake-admin":
                self.redirect("/hub/home")  # they can no longer see the console
            else:
                self.done(f"{target.name} is {what}.", "/hub/admin/users")
        elif action == "reset-password":
            if target.id == actor.id:
                raise InvalidInput("change your own password on the password page instead")
            revoke = self.get_argument("revoke_tokens", "") == "on"
            password = await accounts.reset_password(target, revoke_tokens=revoke)
            await self.audit(actor, "user.password_reset", target.name, revoke_tokens=revoke)
            await show_users(
                self,
                secret={"name": target.name, "password": password, "created": False},
            )
        else:
            wanted = team_names(self.get_argument("teams", ""))
            current = await self.deps.teams.teams_of(target.id)
            joined = [t for t in wanted if t not in current]
            left = [t for t in current if t not in wanted]
            for team in joined:
                await self.deps.teams.join(target.id, team)
            for team in left:
                await self.deps.teams.leave(target.id, team)
            await self.audit(actor, "user.teams", target.name, joined=joined, left=left)
            self.done(f"{target.name}'s teams are saved.", "/hub/admin/users")


class TeamsPage(AdminPage):
    """``/hub/admin/teams``: each team's and user's quota beside what is used now."""

    section = "teams"

    async def get(self) -> None:
        self.admin("admin:quotas")
        await show_teams(self, flash=self.take_flash())

    async def post(self) -> None:
        actor = self.admin("admin:quotas")
        name = self.get_argument("name", "").strip()
        try:
            check_team_name(name)
            if await self.deps.teams.find(name) is not None:
                raise InvalidInput(f"team {name!r} already exists")
        except LabdockError as exc:
            await show_teams(self, status=status_for(exc), error=exc.message, new_team=name)
            return
        await self.deps.teams.ensure(name)
        await self.audit(actor, "team.create", name)
        self.done(f"Team {name} is created; set its quota below.", f"/hub/admin/teams#team-{name}")


async def show_teams(page: AdminPage, status: int = 200, **context: Any) -> None:
    overview = await page.deps.quota_admin.overview()
    teams = {t.name: t for t in await page.deps.teams.all_teams()}
    team_rows = [
        {
            "name": name,
            "members": teams[name].members if name in teams else (),
            "rows": quota_rows(standing),
        }
        for name, standing in overview.teams.items()
    ]
    user_rows = [
        {
            "name": name,
            "rows": quota_rows(standing),
            "own": any(v is not None for v in standing.limits.as_dict().values()),
        }
        for name, standing in overview.users.items()
    ]
    q = page.deps.quota_admin.user_default
    context.setdefault(
        "default_quota",
        ", ".join(
            f"{QUOTA_LABELS[f].lower()} {show_amount(f, getattr(q, f))}" for f in QUOTA_FIELDS
        ),
    )
    context.setdefault("new_team", "")
    context.setdefault("editing", None)
    page.render_admin("admin_teams.html", status, teams=team_rows, users=user_rows, **context)


class QuotaPage(AdminPage):
    """``POST /hub/admin/quotas/(users|teams)/{name}``: the editor's form."""

    section = "teams"

    async def post(self, kind: str, name: str) -> None:
        actor = self.admin("admin:quotas")
        form = {f: self.get_argument(f, "") for f in QUOTA_FIELDS}
        anchor = f"{'team' if kind == 'teams' else 'user'}-{name}"
        try:
            limits = parse_quota_form(form)
            await self.deps.quota_admin.set(actor, quota_kind(kind), name, limits)
        except LabdockError as exc:
            await show_teams(
                self,
                status=status_for(exc),
                error=exc.message,
                editing={"anchor": anchor, "form": form},
            )
            return
        self.done(f"The quota of {kind[:-1]} {name} is saved.", f"/hub/admin/teams#{anchor}")


def server_row(record: ServerRecord, now: datetime) -> dict[str, Any]:
    """A server as the servers table shows it."""
    active = record.state in ACTIVE_STATES
    return {
        "id": record.id,
        "key": f"{record.user_name}/{record.name}",
        "user": record.user_name,
        "name": record.name or "default",
        "environment": record.environment or "—",
        "state": record.state.value,
        "active": active,
        "has_container": record.container_id is not None,
        "cpus": f"{record.resources.cpus:g}",
        "memory": format_memory(record.resources.memory),
        "gpus": record.resources.gpus,
        "url": record.prefix,
        "started": ago(record.started, now) if record.started and active else "—",
        "last_activity": ago(record.last_activity, now),
        "reason": record.stopped_reason or "",
    }


class ServersPage(AdminPage):
    """``/hub/admin/servers``: every server of every user, with stop and remove."""

    section = "servers"

    async def get(self) -> None:
        self.admin("servers")
        now = datetime.now(UTC)
        records = sorted(
            await self.deps.servers.all(),
            key=lambda r: (r.state not in ACTIVE_STATES, r.user_name, r.name),
        )
        self.render_admin(
            "admin_servers.html",
            servers=[server_row(r, now) for r in records],
            flash=self.take_flash(),
        )


class ServerActionPage(AdminPage):
    """``POST /hub/admin/servers/{id}/(stop|remove)``."""

    section = "servers"

    async def post(self, server_id: str, action: str) -> None:
        actor = self.admin("servers")
        record = await self.deps.servers.by_id(int(server_id))
        if record is None:
            raise NotFound("no such server; it may have been removed already")
        remove = action == "remove"
        if remove:
            await self.deps.workspaces.remove(record.id)
        else:
            await self.deps.workspaces.stop(record.id, reason="stopped by an admin")
        label = f"{record.user_name}/{record.name}" if record.name else record.user_name
        await self.audit(actor, f"server.{action}", label, environment=record.environment)
        verb = "stopped and its container removed (the home volume stays)" if remove else "stopped"
        self.done(f"Server {label} is {verb}.", "/hub/admin/servers")


class AuditPage(AdminPage):
    """``/hub/admin/audit``: newest first, by action and actor, 50 a page."""

    section = "audit"

    async def get(self) -> None:
        self.admin("admin:users")
        action = self.get_argument("action", "").strip()[:64]
        actor = self.get_argument("actor", "").strip()[:32]
        outcome = self.get_argument("outcome", "").strip()[:16]
        raw_before = self.get_argument("before", "")
        before = int(raw_before) if raw_before.isdigit() else None
        entries = await self.deps.audit.page(
            action=action or None,
            actor=actor or None,
            outcome=outcome or None,
            before=before,
            limit=AUDIT_PAGE + 1,
        )
        more = len(entries) > AUDIT_PAGE
        entries = entries[:AUDIT_PAGE]
        chosen = (("action", action), ("actor", actor), ("outcome", outcome))
        filters = {k: v for k, v in chosen if v}
        older = (
            "/hub/admin/audit?" + urlencode({**filters, "before": entries[-1].id})
            if more and entries
            else None
        )
        newest = "/hub/admin/audit?" + urlencode(filters) if before is not None else None
        rows = [
            {
                "id": e.id,
                "at": e.at.strftime("%Y-%m-%d %H:%M:%S"),
                "iso": e.at.isoformat(),
                "actor": e.actor,
                "action": e.action,
                "target": e.target,
                "outcome": e.outcome,
                "detail": describe_detail(e.detail),
            }
            for e in entries
        ]
        self.render_admin(
            "admin_audit.html",
            rows=rows,
            actions=await self.deps.audit.actions(),
            filters={"action": action, "actor": actor, "outcome": outcome},
            older=older,
            newest=newest,
        )


def describe_detail(detail: Any) -> str:
    """``message: needs 4 GiB…; memory: 8 GiB`` from an entry's detail, for one table cell."""
    if not isinstance(detail, dict):
        return ""
    parts = []
    for key, value in detail.items():
        if value is None or value == [] or value == "":
            continue
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif key in SIZES and isinstance(value, int):
            value = format_memory(value)
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        parts.append(f"{key}: {value}")
    return "; ".join(parts)[:600]


NAME = r"[^/]+"


def admin_routes(deps: WebDeps) -> list[tuple[str, type[AdminPage], dict[str, object]]]:
    """The console's URL map, for ``hub.app.make_routes``."""
    d: dict[str, object] = {"deps": deps}
    return [
        (r"/hub/admin/?", UsersPage, d),
        (r"/hub/admin/users", UsersPage, d),
        (rf"/hub/admin/users/({NAME})/([a-z-]+)", UserActionPage, d),
        (r"/hub/admin/teams", TeamsPage, d),
        (rf"/hub/admin/quotas/(users|teams)/({NAME})", QuotaPage, d),
        (r"/hub/admin/servers", ServersPage, d),
        (r"/hub/admin/servers/(\d+)/(stop|remove)", ServerActionPage, d),
        (r"/hub/admin/audit", AuditPage, d),
    ]
