"""The OpenAPI document describes every /hub/api route, validates as 3.1, and holds
against a live hub: schemathesis finds no 5xx and no response outside the spec."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import docker
import pytest
import pytest_asyncio
import tornado.httpserver
import tornado.testing
import tornado.web
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator

from hub.app import build_hub
from hub.config import Settings
from hub.domain.accounts import SCOPES, check_username
from hub.domain.catalog import check_server_name
from hub.domain.errors import InvalidInput
from hub.domain.resources import parse_memory
from hub.web.openapi import SERVER_URL, build_document
from tests.busybox_image import ensure_test_image
from tests.conftest import RunningHub, listening
from tests.test_servers_api import busybox_env

METHODS = ("get", "post", "put", "patch", "delete")


def api_routes(app: tornado.web.Application) -> dict[str, set[str]]:
    """Every /hub/api route of ``app`` as ``{"/hub/api/users/{}": {"get", ...}}``."""
    found: dict[str, set[str]] = {}
    for rule in app.wildcard_router.rules:
        pattern = getattr(rule.matcher, "regex", None)
        if pattern is None or not pattern.pattern.startswith("/hub/api"):
            continue
        path = pattern.pattern.removesuffix("$")
        path = re.sub(r"\((?:[^()]|\([^()]*\))*\)", "{}", path)
        path = path.replace("/?", "/").replace("\\", "")
        handler = rule.target
        methods = {
            m
            for m in METHODS
            if getattr(handler, m) is not getattr(tornado.web.RequestHandler, m)
        }
        found.setdefault(path, set()).update(methods)
    return found


def spec_paths(document: dict[str, Any]) -> dict[str, set[str]]:
    return {
        re.sub(r"\{[^}]+\}", "{}", SERVER_URL + path): {m for m in item if m in METHODS}
        for path, item in document["paths"].items()
    }


async def test_every_api_route_is_described_with_its_methods(hub_server: RunningHub) -> None:
    routes = api_routes(hub_server.hub.app)
    described = spec_paths(build_document())
    assert "/hub/api/users/{}/servers/{}" in routes  # the matching itself works
    missing = {p: m for p, m in routes.items() if described.get(p) != m}
    assert not missing, f"routes not described (or with other methods): {missing}"
    extra = set(described) - set(routes)
    assert not extra, f"described but not routed: {extra}"


def test_the_document_validates_as_openapi_3_1() -> None:
    document = build_document()
    assert document["openapi"].startswith("3.1")
    OpenAPIV31SpecValidator(document).validate()


def test_every_operation_has_an_id_and_documents_its_errors() -> None:
    document = build_document()
    ids = []
    for path, item in document["paths"].items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            ids.append(operation["operationId"])
            if operation.get("security") != []:
                assert "401" in operation["responses"], f"{method} {path} lacks its 401"
    assert len(ids) == len(set(ids))


async def test_the_spec_is_served_to_anyone_even_with_a_bad_token(
    hub_server: RunningHub,
) -> None:
    response = await hub_server.fetch(
        "/hub/api/openapi.json", headers={"Authorization": "token nonsense"}
    )
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert json.loads(response.body) == build_document()


# schemathesis against a live hub ------------------------------------------------

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance"
)
# Examples per operation in the fuzzing phase: enough to reach the handlers'
# branches, few enough that the three passes take a minute or two.
MAX_EXAMPLES = int(os.environ.get("LABDOCK_SCHEMATHESIS_EXAMPLES", "10"))
SEED = os.environ.get("LABDOCK_SCHEMATHESIS_SEED", "20261129")


@pytest.fixture(scope="session")
def busybox(docker_client: docker.DockerClient) -> str:
    return ensure_test_image(docker_client)


@pytest_asyncio.fixture
async def live_hub(
    with_settings: Callable[..., Settings], busybox: str
) -> AsyncIterator[RunningHub]:
    """A hub with a cheap busybox environment, small quotas and short launch waits."""
    settings = with_settings(
        hub={"launch_wait": 5.0, "launch_timeout": 20.0, "max_concurrent_launches": 3},
        quota={"cpus": 1.0, "memory": 256 * 1024**2, "gpus": 0, "servers": 2},
    )
    async with build_hub(settings) as built:
        await built.deps.catalog.add(busybox_env(busybox))  # type: ignore[attr-defined]
        alice, _ = await built.deps.accounts.create_user("alice", "correct horse")
        await built.deps.teams.join(alice.id, "risk")
        async with listening(built) as running:
            yield running


# The realistic pass: half of the names are real ones and every launch asks for the
# busybox environment, so that launches, stops, restarts and quota changes reach the
# services. The hostile pass leaves every value to hypothesis.
REALISTIC = """
[dictionaries.users]
values = ["admin", "alice"]
[dictionaries.servers]
values = ["lab", "web"]

[parameters]
"path.name" = { dictionary = "users", probability = 0.5 }
"path.server" = { dictionary = "servers", probability = 0.5 }
"body.environment" = "busybox"
"""


async def schemathesis(
    hub: RunningHub, tmp: Path, name: str, config: str, phases: str, examples: int, *headers: str
) -> tuple[int, str]:
    """Run ``st run`` against the live hub; the hub keeps serving on this event loop."""
    tmp = tmp / name
    tmp.mkdir()
    (tmp / "schemathesis.toml").write_text(config)
    st = str(Path(sys.executable).parent / "st")
    args = [st, "--config-file", str(tmp / "schemathesis.toml"), "--no-color", "run"]
    args += [f"{hub.url}/hub/api/openapi.json"]
    args += ["--checks", CHECKS, "--max-examples", str(examples), "--seed", SEED]
    args += ["--phases", phases, "--workers", "1"]
    args += ["--request-timeout", "60", "--generation-database", "none"]
    args += ["--report-dir", str(tmp / "report"), "--report", "har"]
    for header in headers:
        args += ["-H", header]
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp,
        # The hub is on loopback: never through a proxy the environment may name.
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=300)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    # Set LABDOCK_SCHEMATHESIS_LOG=/tmp/st- to keep each pass's full report.
    if os.environ.get("LABDOCK_SCHEMATHESIS_LOG"):
        Path(os.environ["LABDOCK_SCHEMATHESIS_LOG"] + name).write_bytes(out)
    return proc.returncode or 0, out.decode(errors="replace")


async def test_schemathesis_finds_no_server_errors_and_nothing_outside_the_spec(
    live_hub: RunningHub, tmp_path: Path
) -> None:
    accounts = live_hub.hub.deps.accounts
    admin = await accounts.get(live_hub.hub.settings.hub.admin_user)
    auth = f"Authorization: token {await accounts.create_token(admin, scopes=SCOPES)}"
    failed = []
    # The coverage phase (boundary values of every field) costs the most time; the
    # anonymous pass only has to show that every refusal is a described one.
    for name, config, phases, examples, headers in (
        ("realistic", REALISTIC, "examples,coverage,fuzzing", MAX_EXAMPLES, [auth]),
        ("hostile", "", "coverage,fuzzing", MAX_EXAMPLES, [auth]),
        ("anonymous", "", "examples,fuzzing", max(MAX_EXAMPLES // 3, 1), []),
    ):
        code, output = await schemathesis(
            live_hub, tmp_path, name, config, phases, examples, *headers
        )
        if code != 0:
            failed.append(f"--- {name} pass ---\n{output[-10000:]}")
        if name == "realistic":  # it reached the services: some launches were admitted
            assert await live_hub.hub.deps.servers.all(), output[-5000:]
    assert not failed, "\n".join(failed)


async def test_progress_events_carry_the_described_progress_event(live_hub: RunningHub) -> None:
    # schemathesis checks the event frames; the JSON inside each data line is checked here.
    accounts = live_hub.hub.deps.accounts
    admin = await accounts.get(live_hub.hub.settings.hub.admin_user)
    headers = {"Authorization": f"token {await accounts.create_token(admin, scopes=SCOPES)}"}
    launch = await live_hub.fetch(
        "/hub/api/users/admin/servers/lab",
        method="POST",
        headers=headers,
        body=json.dumps({"environment": "busybox"}),
        request_timeout=60,
    )
    assert launch.code in (201, 202), launch.body
    stream = await live_hub.fetch(
        json.loads(launch.body)["progress_url"], headers=headers, request_timeout=60
    )
    assert stream.code == 200
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    schemas = build_document()["components"]["schemas"]
    validator = Draft202012Validator(schemas["ProgressEvent"])
    events = [
        json.loads(line.removeprefix("data: "))
        for line in stream.body.decode().splitlines()
        if line.startswith("data: ")
    ]
    assert events and events[-1]["ready"] is True
    for event in events:
        validator.validate(event)


# Bugs schemathesis found: each of these answered 500 before it was fixed --------


def documented(method: str, path: str, status: int) -> bool:
    """Whether the spec lists ``status`` for the operation that ``path`` names."""
    for template, item in build_document()["paths"].items():
        pattern = re.sub(r"\{[^}]+\}", "[^/]+", template)
        if re.fullmatch(pattern, path) and method.lower() in item:
            return str(status) in item[method.lower()]["responses"]
    raise AssertionError(f"{method} {path} is not in the spec")


async def answers(hub: RunningHub, cases: list[tuple[str, str, Any, int]]) -> list[str]:
    """Send each case as the admin; list those whose answer differs or is undocumented."""
    accounts = hub.hub.deps.accounts
    admin = await accounts.get(hub.hub.settings.hub.admin_user)
    token = await accounts.create_token(admin, scopes=SCOPES)
    wrong = []
    for method, path, body, expected in cases:
        kwargs: dict[str, Any] = {
            "method": method,
            "headers": {"Authorization": f"token {token}"},
            "allow_nonstandard_methods": True,
        }
        if body is not None:
            kwargs["body"] = body if isinstance(body, str) else json.dumps(body)
        response = await hub.fetch("/hub/api" + path, request_timeout=60, **kwargs)
        message = json.loads(response.body).get("message", "") if response.body else ""
        if response.code != expected or not documented(method, path.replace("%00", ""), expected):
            wrong.append(f"{method} {path} {str(body)[:60]}: {response.code} {message[:200]}")
    return wrong


async def test_names_holding_nul_are_not_found_rather_than_a_database_error(
    hub_server: RunningHub,
) -> None:
    # PostgreSQL refuses NUL in text, so these reached the database and failed there.
    wrong = await answers(
        hub_server,
        [
            ("GET", "/users/a%00b", None, 404),
            ("POST", "/users/a%00b", {}, 404),
            ("PATCH", "/users/a%00b", {"disabled": False}, 404),
            ("GET", "/users/admin/servers/a%00/progress", None, 404),
            ("DELETE", "/users/admin/servers/a%00", {}, 404),
            ("POST", "/users/admin/servers/a%00/restart", {}, 404),
            ("GET", "/quotas/teams/a%00", None, 404),
            ("PUT", "/quotas/users/a%00", {"cpus": 1}, 404),
        ],
    )
    assert not wrong, "\n".join(wrong)


HOSTILE_NAMES = ["%E2%84%AAate", "..", "a%2Fb", "x" * 5000, "%E2%80%AEnimda", "admin%0A", "A", "-x"]


async def test_hostile_user_and_server_names_get_a_described_4xx(hub_server: RunningHub) -> None:
    cases: list[tuple[str, str, Any, int]] = []
    for name in HOSTILE_NAMES:
        cases += [
            ("GET", f"/users/{name}", None, 404),
            ("POST", f"/users/{name}", {}, 400),
            ("PATCH", f"/users/{name}", {"disabled": True}, 404),
            ("POST", f"/users/{name}/server", {"environment": "busybox"}, 404),
            ("POST", f"/users/admin/servers/{name}", {"environment": "busybox"}, 400),
            ("DELETE", f"/users/admin/servers/{name}", {}, 404),
            ("GET", f"/quotas/teams/{name}", None, 404),
        ]
    wrong = await answers(hub_server, cases)
    assert not wrong, "\n".join(wrong)


async def test_bodies_holding_nul_are_refused_before_the_database(
    hub_server: RunningHub,
) -> None:
    wrong = await answers(
        hub_server,
        [
            ("POST", "/users/admin/server", {"environment": "a\x00b"}, 400),
            ("POST", "/users/bob", {"password": "correct\x00horse"}, 400),
            ("POST", "/users/carol", {"teams": ["risk\x00"]}, 400),
        ],
    )
    assert not wrong, "\n".join(wrong)


async def test_amounts_beyond_any_column_are_refused_with_a_reason(
    hub_server: RunningHub, busybox: str
) -> None:
    await hub_server.hub.deps.catalog.add(busybox_env(busybox))  # type: ignore[attr-defined]
    wrong = await answers(
        hub_server,
        [
            ("POST", "/users/admin/server", {"environment": "busybox", "memory": "9" * 400}, 400),
            ("POST", "/users/admin/server", {"environment": "busybox", "cpus": 10**400}, 400),
            ("PUT", "/quotas/users/admin", {"servers": 2**70}, 400),
            ("PUT", "/quotas/users/admin", {"gpus": 2**63}, 400),
            ("PUT", "/quotas/users/admin", {"memory": 2**70}, 400),
            ("PUT", "/quotas/users/admin", {"storage": "99999999999T"}, 400),
            ("PUT", "/quotas/users/admin", {"cpus": 10**400}, 400),
        ],
    )
    assert not wrong, "\n".join(wrong)


async def test_json_python_reads_but_json_forbids_is_refused(hub_server: RunningHub) -> None:
    wrong = await answers(
        hub_server,
        [
            ("PUT", "/quotas/users/admin", '{"cpus": NaN}', 400),
            ("PUT", "/quotas/users/admin", '{"cpus": Infinity}', 400),
            ("POST", "/users/admin/server", "[" * 100_000 + "]" * 100_000, 400),
        ],
    )
    assert not wrong, "\n".join(wrong)


def test_a_trailing_newline_does_not_slip_through_the_name_rules() -> None:
    for name in ("admin\n", "lab\n"):
        with pytest.raises(InvalidInput):
            check_username(name)
        with pytest.raises(InvalidInput):
            check_server_name(name)


def test_a_size_with_endless_digits_is_invalid_input_not_an_overflow() -> None:
    with pytest.raises(InvalidInput, match="more than any machine has"):
        parse_memory("9" * 400)
    with pytest.raises(InvalidInput, match="more than any machine has"):
        parse_memory(2**64)
    assert parse_memory("8T") == 8 * 1024**4
