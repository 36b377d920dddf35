"""Settings, read once at start: the TOML file, then ``LABDOCK_*`` variables, then flags.

    settings = load_settings(config_file=Path("labdock.toml"), env=os.environ,
                             flags={"hub.port": "8001"})
    settings.hub.port  # 8001

Every value is checked here, so that a bad one stops the hub with a one-line
message that names the key (``hub.port: expected a whole number, got 'x'``),
never with a traceback later.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from hub.domain.errors import ConfigError
from hub.domain.oidc import OidcSettings as OidcSettings  # a section of Settings
from hub.domain.quota_admin import QuotaAmounts
from hub.domain.quotas import Limits
from hub.domain.resources import parse_memory

ENV_PREFIX = "LABDOCK_"
# The backends ``hub.backends.bundle.open_backend`` can build.
BACKEND_KINDS = ("docker", "fake")


@dataclass(frozen=True)
class HubSettings:
    """The hub process itself."""

    ip: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("data")
    # Empty: generated once and kept in <data_dir>/cookie_secret (mode 0600).
    cookie_secret: str = ""
    session_hours: float = 12.0
    admin_user: str = "admin"
    # Set when the hub sits behind a TLS-terminating proxy: cookies get Secure.
    public_url: str = ""
    max_concurrent_launches: int = 8
    launch_timeout: float = 120.0
    # How long a launch request waits for readiness before answering 202.
    launch_wait: float = 30.0
    # Empty: generated once and kept in the database. Prefixes container names.
    id: str = ""
    # Subdomain mode (empty: path mode). Each user's servers answer only on a host of
    # their own, /user/alice/... at <scheme>://alice.<user_domain>[:port]/user/alice/...,
    # so that no user's code shares an origin with the hub or with another user; the
    # hub's /user/ paths redirect there. Needs hub.public_url (the hub's own origin,
    # not under this domain), a wildcard DNS record *.<user_domain> pointing at the hub
    # (or its TLS proxy) and, for HTTPS, a wildcard certificate for *.<user_domain>
    # beside the hub's own. Names that are not DNS labels get "u--<base32 of name>".
    # A domain on another registrable domain than the hub's (hub.example.org and
    # *.example-users.org) also stops the browser sending the hub's SameSite cookies
    # from users' pages; under the same one, HTTPS is needed for __Host- cookies.
    user_domain: str = ""
    # Days an API token lives when its creator names no expiry; 0: such tokens never expire.
    token_expiry_days: float = 90.0
    # Let admins open every user's server through the proxy (/user/...). Off by
    # default, because it is risky: the user's page then runs in the admin's browser
    # on the hub's own origin (servers are reached by path), where its scripts can
    # call the hub's API as the admin. Admins stop, restart and remove servers from
    # the console (the API) either way.
    admin_access: bool = False
    # Seconds a client may take to send one whole request head, from a new connection
    # or from the head's first byte, however steadily it trickles (slowloris): 408.
    request_head_timeout: float = 30.0
    # Connections open at once from one client address on the public port (the one
    # over gets 429 and is closed); 0: no cap. Behind a TLS-terminating proxy every
    # client shares the proxy's address: raise it, or set 0 and cap there.
    max_connections_per_client: int = 256


@dataclass(frozen=True)
class DbSettings:
    """The database. Empty URL: SQLite at <data_dir>/labdock.sqlite."""

    url: str = ""
    echo: bool = False


@dataclass(frozen=True)
class BackendSettings:
    """Where containers run."""

    # "docker": one engine. "fake": in memory, nothing runs (tests, demos). "swarm": planned.
    kind: str = "docker"
    # Empty: the SDK's default (DOCKER_HOST or the local socket).
    docker_host: str = ""
    threads: int = 16
    stop_grace: float = 10.0
    # Extra labels on everything labdock creates, "key=value,key=value".
    labels: str = ""
    # Serve the directories an image lists in its labdock.runtime-paths label from
    # read-only volume copies: "auto" when the storage driver (fuse-overlayfs, vfs) makes
    # every container read its image with cold caches. Costs the copies' disk space.
    runtime_volumes: Literal["auto", "on", "off"] = "auto"
    # Refuse what workspaces send to the host's own addresses (iptables INPUT rules on the
    # hub's bridge), so that host services listening on 0.0.0.0 are not theirs to reach.
    host_firewall: bool = True


@dataclass(frozen=True)
class CapacitySettings:
    """What the host offers to servers; 0 means: measure this machine."""

    cpus: float = 0.0
    memory: int = 0
    # Admins may promise more than the machine has; CPU overcommit is usually safe.
    overcommit: float = 1.0
    # GPU ids to hand out, e.g. "0,1"; "auto" asks NVML; empty means none.
    gpus: str = "auto"


@dataclass(frozen=True)
class ImagesSettings:
    """Environment image builds."""

    cache_dir: Path = Path(".cache/labdock")
    # Empty: the first Debian mirror in the machine's apt sources.
    mirror: str = ""


@dataclass(frozen=True)
class QuotaDefaults:
    """Quota applied to a user with no quota of their own."""

    cpus: float = 4.0
    memory: int = 16 * 1024**3
    gpus: int = 0
    servers: int = 3
    storage: int = 20 * 1024**3
    # Seconds between measurements of every volume's size.
    storage_interval: float = 300.0
    # An image with `du` for the measuring helper; empty: the newest labdock/base.
    storage_image: str = ""

    def user_limits(self) -> Limits:
        """What admission allows a user with no quota of their own (storage aside)."""
        return Limits(cpus=self.cpus, memory=self.memory, gpus=self.gpus, servers=self.servers)

    def amounts(self) -> QuotaAmounts:
        """The five limits, as the quota console shows a user's default."""
        return QuotaAmounts(
            cpus=self.cpus,
            memory=self.memory,
            gpus=self.gpus,
            servers=self.servers,
            storage=self.storage,
        )

    def limits(self) -> dict[str, float | int | None]:
        """The five limits, as a new user's own quota row starts from them."""
        return {
            "cpus": self.cpus,
            "memory": self.memory,
            "gpus": self.gpus,
            "servers": self.servers,
            "storage": self.storage,
        }


@dataclass(frozen=True)
class Settings:
    """All of labdock's settings, validated and frozen."""

    hub: HubSettings = field(default_factory=HubSettings)
    db: DbSettings = field(default_factory=DbSettings)
    backend: BackendSettings = field(default_factory=BackendSettings)
    capacity: CapacitySettings = field(default_factory=CapacitySettings)
    images: ImagesSettings = field(default_factory=ImagesSettings)
    quota: QuotaDefaults = field(default_factory=QuotaDefaults)
    oidc: OidcSettings = field(default_factory=OidcSettings)

    @property
    def labels(self) -> dict[str, str]:
        """``backend.labels`` as a dict."""
        pairs = (p.partition("=") for p in self.backend.labels.split(",") if p.strip())
        return {k.strip(): v.strip() for k, _, v in pairs}

    @property
    def db_url(self) -> str:
        """The database URL, with the SQLite default filled in."""
        if self.db.url:
            return self.db.url
        return f"sqlite:///{(self.hub.data_dir / 'labdock.sqlite').as_posix()}"


_MEMORY_KEYS = {"quota.memory", "quota.storage", "capacity.memory"}


def _sections() -> dict[str, type[Any]]:
    return {f.name: typing.get_type_hints(Settings)[f.name] for f in dataclasses.fields(Settings)}


def _convert(key: str, hint: Any, raw: Any) -> Any:
    """Turn a TOML, environment or flag value into the field's type, or say why not."""
    if key in _MEMORY_KEYS:
        try:
            return parse_memory(raw if isinstance(raw, int) else str(raw), what=key)
        except Exception as exc:  # InvalidInput: re-raise as a config error
            raise ConfigError(f"{key}: expected a size such as 16G, got {raw!r}") from exc
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if raw not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise ConfigError(f"{key}: must be one of {choices}, got {raw!r}")
        return raw
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{key}: expected true or false, got {raw!r}")
    if hint is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{key}: expected a whole number, got {raw!r}")
        try:
            return int(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{key}: expected a whole number, got {raw!r}") from None
    if hint is float:
        if isinstance(raw, bool):
            raise ConfigError(f"{key}: expected a number, got {raw!r}")
        try:
            return float(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {raw!r}") from None
    if hint is Path:
        if not isinstance(raw, str | Path) or not str(raw):
            raise ConfigError(f"{key}: expected a path, got {raw!r}")
        return Path(raw)
    if hint is str:
        if not isinstance(raw, str):
            raise ConfigError(f"{key}: expected a string, got {raw!r}")
        return raw
    raise ConfigError(f"{key}: unsupported setting type")  # a bug in this module


def _check(settings: Settings) -> Settings:
    hub = settings.hub
    if not 1 <= hub.port <= 65535:
        raise ConfigError(f"hub.port: must be between 1 and 65535, got {hub.port}")
    try:
        ipaddress.ip_address(hub.ip)
    except ValueError:
        if hub.ip not in {"localhost", ""}:
            raise ConfigError(f"hub.ip: expected an IP address, got {hub.ip!r}") from None
    if hub.session_hours <= 0:
        raise ConfigError("hub.session_hours: must be greater than 0")
    if hub.max_concurrent_launches < 1:
        raise ConfigError("hub.max_concurrent_launches: must be at least 1")
    if hub.launch_wait < 0:
        raise ConfigError("hub.launch_wait: must not be negative")
    if not 0 <= hub.token_expiry_days <= 36500:
        raise ConfigError("hub.token_expiry_days: must be between 0 (never) and 36500 days")
    if hub.launch_timeout <= 0:
        raise ConfigError("hub.launch_timeout: must be greater than 0")
    if hub.request_head_timeout <= 0:
        raise ConfigError("hub.request_head_timeout: must be greater than 0")
    if hub.max_connections_per_client < 0:
        raise ConfigError("hub.max_connections_per_client: must not be negative (0: no cap)")
    if hub.public_url and not hub.public_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"hub.public_url: must start with http:// or https://, got {hub.public_url!r}"
        )
    if hub.user_domain:
        _check_user_domain(hub.user_domain, hub.public_url)
    kind = settings.backend.kind
    if kind not in BACKEND_KINDS:
        accepted = ", ".join(repr(k) for k in BACKEND_KINDS)
        planned = " is planned but not available yet" if kind == "swarm" else " is not a backend"
        raise ConfigError(f"backend.kind: {kind!r}{planned}; accepted kinds: {accepted}")
    if settings.backend.threads < 1:
        raise ConfigError("backend.threads: must be at least 1")
    url = settings.db.url
    if url and not url.startswith(("sqlite://", "sqlite+", "postgresql://", "postgresql+")):
        raise ConfigError(
            f"db.url: expected sqlite:///PATH or postgresql+psycopg://USER@HOST/DB, got {url!r}"
        )
    cap = settings.capacity
    if cap.cpus < 0 or cap.memory < 0:
        raise ConfigError("capacity: cpus and memory must not be negative (0 measures the host)")
    if cap.overcommit <= 0:
        raise ConfigError("capacity.overcommit: must be greater than 0")
    for pair in filter(None, (p.strip() for p in settings.backend.labels.split(","))):
        key, sep, _ = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"backend.labels: expected key=value pairs, got {pair!r}")
    q = settings.quota
    if q.cpus < 0 or q.memory < 0 or q.gpus < 0 or q.servers < 0 or q.storage < 0:
        raise ConfigError("quota: limits must not be negative")
    if q.storage_interval < 1:
        raise ConfigError("quota.storage_interval: must be at least 1 second")
    _check_oidc(settings.oidc)
    return settings


_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"


def _check_user_domain(domain: str, public_url: str) -> None:
    """Refuse a user domain that could not keep users' code off the hub's origin."""
    if not re.fullmatch(rf"{_LABEL}(\.{_LABEL})+", domain):
        raise ConfigError(
            "hub.user_domain: expected a lower-case host name such as users.example.org "
            f"(no scheme, port or leading dot), got {domain!r}"
        )
    if not public_url:
        raise ConfigError(
            "hub.user_domain: needs hub.public_url, the hub's own address "
            "(such as https://hub.example.org), where user hosts send browsers to sign in"
        )
    hub = urlsplit(public_url)
    name = (hub.hostname or "").lower()
    if name == domain or name.endswith("." + domain):
        raise ConfigError(
            f"hub.user_domain: the hub's host {name!r} must not be {domain!r} or under it, "
            "or users' servers would share the hub's origin"
        )
    if hub.path not in ("", "/") or hub.query or hub.fragment:
        raise ConfigError(
            "hub.public_url: must be an origin without a path in subdomain mode, "
            f"got {public_url!r}"
        )


def _check_oidc(oidc: OidcSettings) -> None:
    if not oidc.issuer:
        return
    parts = urlsplit(oidc.issuer)
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ConfigError(
            f"oidc.issuer: must be an https:// URL (http only on localhost), got {oidc.issuer!r}"
        )
    if parts.query or parts.fragment:
        raise ConfigError("oidc.issuer: must not have a query or fragment")
    if not oidc.client_id:
        raise ConfigError("oidc.client_id: required when oidc.issuer is set")
    if "openid" not in oidc.scopes.split():
        raise ConfigError(f"oidc.scopes: must include openid, got {oidc.scopes!r}")
    if not oidc.username_claim:
        raise ConfigError("oidc.username_claim: must not be empty")


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--config: no such file: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None


def load_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, str | None] | None = None,
) -> Settings:
    """Merge file, environment and flags (later wins) into checked ``Settings``.

    ``flags`` maps dotted keys (``"hub.port"``) to raw strings; ``None`` means unset.
    Raises ``ConfigError`` naming the first bad key.
    """
    sections = _sections()
    values: dict[str, dict[str, Any]] = {name: {} for name in sections}

    def put(section: str, key: str, raw: Any, where: str) -> None:
        if section not in sections:
            known = ", ".join(sorted(sections))
            raise ConfigError(f"{where}: unknown section {section!r} (known: {known})")
        hints = typing.get_type_hints(sections[section])
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"{where}: unknown key {section}.{key} (known: {known})")
        values[section][key] = _convert(f"{section}.{key}", hints[key], raw)

    if config_file is not None:
        for section, table in _read_file(config_file).items():
            if not isinstance(table, dict):
                raise ConfigError(f"{config_file}: {section!r} must be a [section] table")
            for key, raw in table.items():
                put(section, key, raw, str(config_file))

    for name, raw in (env or {}).items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        # Only variables naming one of our sections are settings; others
        # (LABDOCK_TEST_*, variables meant for containers) are not ours to judge.
        if section in sections:
            put(section, key, raw, name)

    for dotted, raw in (flags or {}).items():
        if raw is None:
            continue
        section, _, key = dotted.partition(".")
        put(section, key, raw, "--" + key.replace("_", "-"))

    built = {name: cls(**values[name]) for name, cls in sections.items()}
    return _check(Settings(**built))
