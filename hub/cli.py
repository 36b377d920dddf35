"""The ``labdock`` command.

    $ labdock serve --port 8000
    $ labdock user add alice --team risk
    $ labdock images build python
    $ labdock db upgrade

Bad configuration exits with code 2 and one line naming the key; other known
failures exit 1 with one line. Only a bug in labdock prints a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from hub import __version__
from hub.config import Settings, load_settings
from hub.domain.errors import ConfigError, LabdockError, SchemaTooNew

EXIT_CONFIG = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other configuration error; usage is one --help away.
        self.exit(EXIT_CONFIG, f"labdock: {message} (see `{self.prog} --help`)\n")


def _settings(args: argparse.Namespace) -> Settings:
    flags = {
        "db.url": getattr(args, "db_url", None),
        "hub.ip": getattr(args, "ip", None),
        "hub.port": getattr(args, "port", None),
    }
    return load_settings(config_file=args.config, env=os.environ, flags=flags)


def _cmd_serve(args: argparse.Namespace) -> int:
    from hub.serve import serve

    asyncio.run(serve(_settings(args)))
    return 0


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from hub.db.engine import redact
    from hub.db.migrate import upgrade

    settings = _settings(args)
    revision = upgrade(settings.db_url)
    print(f"database {redact(settings.db_url)} is at revision {revision}")
    return 0


def _read_password_stdin() -> str:
    line = sys.stdin.readline()
    if not line:
        raise ConfigError("--password-stdin: nothing was given on standard input")
    return line.rstrip("\r\n")


def _cmd_user_add(args: argparse.Namespace) -> int:
    from hub.cli_db import add_user

    settings = _settings(args)
    password = _read_password_stdin() if args.password_stdin else None
    name, generated = asyncio.run(
        add_user(settings, args.name, password, is_admin=args.admin, team=args.team)
    )
    print(f"created user {name}" + (" (admin)" if args.admin else ""))
    if generated:
        print(f"one-time password: {generated}")
        print("It is shown only this once; the user chooses a new one at first login.")
    return 0


def _cmd_token_create(args: argparse.Namespace) -> int:
    from hub.cli_db import create_token

    expires = None
    if args.expires_in is not None:
        try:
            expires = float(args.expires_in)
        except ValueError:
            raise ConfigError(
                f"--expires-in: expected a number of days, got {args.expires_in!r}"
            ) from None
    token, _ = asyncio.run(create_token(_settings(args), args.name, args.scopes, expires))
    print(token)
    return 0


_CONTROL = dict.fromkeys([*range(32), 127], "?")


def _when(at: datetime | None, never: str) -> str:
    return at.strftime("%Y-%m-%d %H:%M") if at else never


def _cmd_token_list(args: argparse.Namespace) -> int:
    from hub.cli_db import list_tokens

    tokens = asyncio.run(list_tokens(_settings(args), args.name))
    if not tokens:
        print(f"{args.name} has no API tokens")
        return 0
    print(f"{'ID':>6}  {'CREATED':<16}  {'LAST USED':<16}  {'EXPIRES':<16}  SCOPES  NOTE")
    for t in tokens:
        # Notes come from users: control characters could rewrite the terminal.
        note = t.note.translate(_CONTROL)
        print(
            f"{t.id:>6}  {_when(t.created, '-'):<16}  {_when(t.last_used, 'never'):<16}  "
            f"{_when(t.expires, 'never'):<16}  {','.join(sorted(t.scopes))}  {note}"
        )
    return 0


def _cmd_token_revoke(args: argparse.Namespace) -> int:
    from hub.cli_db import revoke_tokens

    if (args.token_id is None) == (not args.all):
        raise ConfigError("token revoke: give a TOKEN_ID (see `labdock token list`) or --all")
    token_id = None
    if args.token_id is not None:
        if not args.token_id.isdecimal() or len(args.token_id) > 18:
            raise ConfigError(f"TOKEN_ID: expected a number, got {args.token_id!r}")
        token_id = int(args.token_id)
    count = asyncio.run(revoke_tokens(_settings(args), args.name, token_id))
    if token_id is not None:
        print(f"revoked token {token_id} of {args.name}")
    else:
        print(f"revoked {count} token{'s' if count != 1 else ''} of {args.name}")
    return 0


def _cmd_user_reset_password(args: argparse.Namespace) -> int:
    from hub.cli_db import reset_password

    password = asyncio.run(
        reset_password(_settings(args), args.name, revoke_tokens=args.revoke_tokens)
    )
    print(f"one-time password of {args.name}: {password}")
    print(
        "Their sessions have ended"
        + (" and their API tokens are revoked." if args.revoke_tokens else ".")
    )
    print("It is shown only this once; the user chooses a new one at next login.")
    return 0


def _quota_value(
    flag: str, raw: str | None, *, size: bool = False, whole: bool = False
) -> float | int | None:
    from hub.domain.resources import parse_memory

    if raw is None:
        return None
    if raw.lower() in ("none", "unlimited"):
        return None
    try:
        value: float | int = parse_memory(raw, what=flag) if size else float(raw)
    except (ValueError, LabdockError):
        raise ConfigError(
            f"{flag}: expected {'a size such as 4G' if size else 'a number'}, got {raw!r}"
        ) from None
    if whole:
        if float(value) != int(value):
            raise ConfigError(f"{flag}: expected a whole number, got {raw!r}")
        value = int(value)
    if value < 0:
        raise ConfigError(f"{flag}: must not be negative")
    return value


def _cmd_quota_set(args: argparse.Namespace) -> int:
    from hub.cli_db import set_quota

    given = {
        "cpus": (args.cpus, False, False),
        "memory": (args.memory, True, False),
        "gpus": (args.gpus, False, True),
        "servers": (args.servers, False, True),
        "storage": (args.storage, True, False),
    }
    limits = {
        name: _quota_value(f"--{name}", raw, size=size, whole=whole)
        for name, (raw, size, whole) in given.items()
        if raw is not None
    }
    if not limits:
        raise ConfigError(
            "quota set: give at least one of --cpus, --memory, --gpus, --servers, --storage"
        )
    print(asyncio.run(set_quota(_settings(args), user=args.user, team=args.team, limits=limits)))
    return 0


def _cmd_images_build(args: argparse.Namespace) -> int:
    import docker
    from rich.console import Console

    from hub.images.build import build_images
    from hub.images.manifest import images_dir

    settings = _settings(args)
    console = Console(stderr=True)
    try:
        client = docker.DockerClient.from_env()
        client.ping()
    except Exception as exc:
        raise LabdockError(f"cannot reach the Docker engine: {exc}") from None
    built = build_images(
        client,
        args.names or None,
        images_dir=images_dir(),
        cache_dir=settings.images.cache_dir,
        console=console,
        force=args.force,
        upstream=args.upstream,
    )
    for image in built:
        state = "up to date" if image.skipped else f"built in {image.seconds:.0f} s"
        size = image.size_bytes / 1024**2
        print(f"{image.name:<16} {image.tag:<32} {size:>7.0f} MB  {state}  {image.image_id}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="labdock", description="Self-hosted data-science workspaces.")
    parser.add_argument("--version", action="version", version=f"labdock {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def db_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="TOML configuration file")
        p.add_argument("--db-url", help="database URL (default: SQLite under ./data/)")

    serve = commands.add_parser("serve", help="run the hub")
    db_options(serve)
    serve.add_argument("--ip", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", help="port to listen on (default 8000)")
    serve.set_defaults(run=_cmd_serve)

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    up = db_commands.add_parser("upgrade", help="apply pending migrations")
    db_options(up)
    up.set_defaults(run=_cmd_db_upgrade)

    user = commands.add_parser("user", help="manage users")
    user_commands = user.add_subparsers(dest="user_command", required=True, parser_class=_Parser)
    add = user_commands.add_parser("add", help="create a user")
    db_options(add)
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="make the user an admin")
    add.add_argument("--team", help="add the user to this team (created if missing)")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add.set_defaults(run=_cmd_user_add)
    reset = user_commands.add_parser(
        "reset-password", help="give a user a one-time password; their sessions end"
    )
    db_options(reset)
    reset.add_argument("name")
    reset.add_argument(
        "--revoke-tokens", action="store_true", help="also revoke all the user's API tokens"
    )
    reset.set_defaults(run=_cmd_user_reset_password)

    token = commands.add_parser("token", help="API tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True, parser_class=_Parser)
    create = token_commands.add_parser("create", help="print a new API token, once")
    db_options(create)
    create.add_argument("name", help="the user the token speaks for")
    create.add_argument(
        "--scopes", help="comma-separated (default: servers,read:servers,access:servers)"
    )
    create.add_argument(
        "--expires-in", help="days until the token expires (default: hub.token_expiry_days)"
    )
    create.set_defaults(run=_cmd_token_create)
    listing = token_commands.add_parser("list", help="a user's tokens (never the tokens)")
    db_options(listing)
    listing.add_argument("name", help="the user whose tokens to list")
    listing.set_defaults(run=_cmd_token_list)
    revoke = token_commands.add_parser("revoke", help="revoke a user's token, or all of them")
    db_options(revoke)
    revoke.add_argument("name", help="the user whose token to revoke")
    revoke.add_argument("token_id", nargs="?", help="the ID that `labdock token list` shows")
    revoke.add_argument("--all", action="store_true", help="revoke every token of the user")
    revoke.set_defaults(run=_cmd_token_revoke)

    quota = commands.add_parser("quota", help="quotas")
    quota_commands = quota.add_subparsers(dest="quota_command", required=True, parser_class=_Parser)
    qset = quota_commands.add_parser(
        "set", help="set a user's or a team's quota ('none' lifts a limit)"
    )
    db_options(qset)
    owner = qset.add_mutually_exclusive_group(required=True)
    owner.add_argument("--user")
    owner.add_argument("--team")
    for flag in ("cpus", "memory", "gpus", "servers", "storage"):
        qset.add_argument(f"--{flag}")
    qset.set_defaults(run=_cmd_quota_set)

    images = commands.add_parser("images", help="environment images")
    image_commands = images.add_subparsers(
        dest="images_command", required=True, parser_class=_Parser
    )
    build = image_commands.add_parser("build", help="build images whose inputs changed")
    build.add_argument("--config", type=Path, help="TOML configuration file")
    build.add_argument("names", nargs="*", help="environments to build (default: all)")
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build.add_argument(
        "--upstream",
        action="store_true",
        help="build FROM each manifest's official upstream_base (a connected machine)",
    )
    build.set_defaults(run=_cmd_images_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``labdock`` console script."""
    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (ConfigError, SchemaTooNew) as exc:
        print(f"labdock: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    except LabdockError as exc:
        print(f"labdock: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
