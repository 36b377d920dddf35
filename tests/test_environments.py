"""The shipped environments, end to end: launched by a real hub, used through its proxy.

Each test launches one environment through the REST API as a real user (an API
token), talks to the app only through ``/user/<name>/<server>/`` (HTTP and
WebSocket, as a browser would), then removes the server. The images must be
built (``labdock images build``, which ``make test`` runs first): a missing one
fails its test. One hub and one user serve the whole module; everything they
create carries ``labdock.test=1`` and is removed by hub id at the end.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import pytest_asyncio
import tornado.httpclient
import tornado.httpserver
import tornado.httputil
import tornado.testing
import tornado.web
from tornado.websocket import WebSocketClientConnection, websocket_connect

from hub.app import build_hub
from hub.backends.docker_names import home_volume_name
from hub.config import BackendSettings, CapacitySettings, DbSettings, HubSettings, Settings
from hub.images.build import latest_tag
from tests.conftest import RunningHub, clean_engine, fresh_database

IMAGES = Path(__file__).resolve().parent.parent / "images"
SHARED_JUPYTER_FILES = ("start.sh", "labdock_identity.py")
USER = "ada"
LABEL = {"labdock.test": "1"}
# Copying the four environments' runtime trees (about 3 GB) on a loaded CI machine.
RUNTIME_COPIES_WITHIN = 900.0
RUNTIME_PATHS = ("/opt/labdock", "/usr/lib/python3.11")

pytestmark = [pytest.mark.docker, pytest.mark.slow]
shared_loop = pytest.mark.asyncio(loop_scope="module")


# --- one hub and one user for the module ---------------------------------------------------


@pytest.fixture(scope="module")
def module_db_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SQLite, or a fresh PostgreSQL database when ``LABDOCK_TEST_DB_URL`` names a server."""
    with fresh_database(tmp_path_factory.mktemp("envs-db")) as url:
        yield url


@pytest.fixture(scope="module")
def module_settings(
    tmp_path_factory: pytest.TempPathFactory, module_db_url: str, docker_client: docker.DockerClient
) -> Iterator[Settings]:
    hub_id = "t" + secrets.token_hex(5)
    yield Settings(
        hub=HubSettings(
            data_dir=tmp_path_factory.mktemp("envs-data"),
            cookie_secret="test-" + "x" * 40,
            id=hub_id,
            launch_timeout=180.0,
        ),
        db=DbSettings(url=module_db_url),
        # The environments run as users get them on a fuse-overlayfs engine: from
        # read-only runtime volumes (made for each image once; the lab waits for them).
        backend=BackendSettings(labels="labdock.test=1", stop_grace=5.0, runtime_volumes="on"),
        capacity=CapacitySettings(cpus=8, memory=16 * 1024**3, gpus=""),
    )
    clean_engine(docker_client, hub_id)


@dataclass
class Lab:
    """The module's hub and its one user, who reaches servers by API token."""

    hub: RunningHub
    token: str
    user_id: int

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    async def api(
        self, method: str, path: str, body: Any = None
    ) -> tornado.httpclient.HTTPResponse:
        kwargs: dict[str, Any] = {"method": method, "headers": self.headers}
        if body is not None or method in ("POST", "PUT", "PATCH"):
            kwargs["body"] = json.dumps(body or {})
        if method == "DELETE" and body is not None:
            kwargs["allow_nonstandard_methods"] = True
        return await self.hub.fetch("/hub/api" + path, request_timeout=200, **kwargs)

    async def app(
        self, server: str, path: str, method: str = "GET", body: Any = None
    ) -> tornado.httpclient.HTTPResponse:
        """A request to the server's app, through the hub's proxy."""
        kwargs: dict[str, Any] = {
            "method": method,
            "headers": {**self.headers, "Content-Type": "application/json"},
            "request_timeout": 60,
        }
        if body is not None or method in ("POST", "PUT", "PATCH"):
            kwargs["body"] = json.dumps(body or {})
        return await self.hub.fetch(f"/user/{USER}/{server}/{path}", **kwargs)

    async def app_json(self, server: str, path: str, method: str = "GET", body: Any = None) -> Any:
        response = await self.app(server, path, method, body)
        assert response.code < 300, f"{method} {path}: {response.code} {response.body[:500]!r}"
        return json.loads(response.body)

    async def websocket(self, server: str, path: str) -> WebSocketClientConnection:
        url = self.hub.url.replace("http://", "ws://") + f"/user/{USER}/{server}/{path}"
        request = tornado.httpclient.HTTPRequest(url, headers=self.headers, connect_timeout=30)
        return await websocket_connect(request)

    async def launch(self, server: str, environment: str, timeout: float = 240) -> dict[str, Any]:
        """Launch and wait until ready; fails with the hub's reason (and logs) if it does not."""
        response = await self.api(
            "POST", f"/users/{USER}/servers/{server}", {"environment": environment}
        )
        assert response.code in (201, 202), f"launch {environment}: {response.body!r}"
        deadline = time.monotonic() + timeout
        while True:
            model = await self.server_model(server)
            if model["ready"]:
                self.assert_runtime_volumes(server)
                return model
            assert model["state"] in ("starting", "running"), (
                f"{environment} did not start: {model['state']}: {model['stopped_reason']}"
            )
            assert time.monotonic() < deadline, f"{environment} not ready in {timeout} s"
            await asyncio.sleep(1)

    async def server_model(self, server: str) -> dict[str, Any]:
        response = await self.api("GET", f"/users/{USER}")
        assert response.code == 200, response.body
        model: dict[str, Any] = json.loads(response.body)["servers"][server]
        return model

    async def remove(self, server: str) -> None:
        response = await self.api("DELETE", f"/users/{USER}/servers/{server}", {"remove": True})
        assert response.code in (202, 204), response.body

    def assert_runtime_volumes(self, server: str) -> None:
        """The server reads its venv and standard library from read-only runtime volumes."""
        host = urllib.parse.urlsplit(self.target(server)).hostname
        engine = docker.from_env()
        try:
            hub = {"label": [f"labdock.hub={self.hub.hub.hub_id}"]}
            found = [
                c for c in engine.containers.list(filters=hub)
                if any(n.get("IPAddress") == host
                       for n in c.attrs["NetworkSettings"]["Networks"].values())
            ]
        finally:
            engine.close()
        assert len(found) == 1, f"no single container at {host}"
        mounts = {m["Destination"]: m for m in found[0].attrs["Mounts"]}
        for path in RUNTIME_PATHS:
            assert path in mounts, f"{server}: {path} is not a runtime volume: {sorted(mounts)}"
            assert mounts[path]["Type"] == "volume" and not mounts[path]["RW"], mounts[path]

    def target(self, server: str) -> str:
        """The container's own address (``http://ip:port``), from the hub's route table."""
        for route in self.hub.hub.routes:
            if route.user == USER and route.server == server:
                return route.target
        raise AssertionError(f"no route for {USER}/{server}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(module_settings: Settings, docker_client: docker.DockerClient) -> AsyncIterator[Lab]:
    try:
        async with build_hub(module_settings) as built:
            # Copied at first launch; made here at once, so that every test sees them.
            assert built.backend is not None
            offered = [e.image for e in await built.deps.catalog.all() if e.launchable]
            copying = built.backend.prepare_runtime(offered)
            await asyncio.wait_for(copying, RUNTIME_COPIES_WITHIN)
            sock, port = tornado.testing.bind_unused_port()
            server = tornado.httpserver.HTTPServer(built.app)
            server.add_sockets([sock])
            accounts = built.deps.accounts
            user, _ = await accounts.create_user(USER, "correct horse")
            scopes = frozenset({"servers", "read:servers", "access:servers"})
            token = await accounts.create_token(user, scopes=scopes)
            try:
                yield Lab(RunningHub(built, f"http://127.0.0.1:{port}"), token, user.id)
            finally:
                server.stop()
                await server.close_all_connections()
    finally:
        clean_engine(docker_client, module_settings.hub.id)


def routes_user_paths(app: tornado.web.Application) -> bool:
    """Whether the app sends ``/user/...`` to a handler of its own (the proxy)."""
    start = tornado.httputil.RequestStartLine("GET", "/user/x/y/", "HTTP/1.1")
    headers = tornado.httputil.HTTPHeaders({"Host": "hub"})
    request = tornado.httputil.HTTPServerRequest(start_line=start, headers=headers)
    handler = app.find_handler(request).handler_class  # type: ignore[attr-defined]
    return bool(handler is not app.settings.get("default_handler_class"))


# --- Jupyter messaging and terminado, just enough -------------------------------------------


async def run_in_kernel(lab: Lab, server: str, code: str, timeout: float = 120) -> str:
    """Start a kernel, execute ``code`` over the kernel WebSocket, return its stdout."""
    kernel = await lab.app_json(server, "api/kernels", "POST", {"name": "python3"})
    ws = await lab.websocket(server, f"api/kernels/{kernel['id']}/channels")
    msg_id = uuid.uuid4().hex
    ws.write_message(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": USER,
                    "session": uuid.uuid4().hex,
                    "version": "5.3",
                    "date": "",
                },
                "parent_header": {},
                "metadata": {},
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
                "channel": "shell",
                "buffers": [],
            }
        )
    )
    stdout, errors = [], []
    try:
        async with asyncio.timeout(timeout):
            while True:
                raw = await ws.read_message()
                assert raw is not None, "the kernel WebSocket closed"
                message = json.loads(raw)
                if message.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = message["msg_type"], message["content"]
                if kind == "stream" and content["name"] == "stdout":
                    stdout.append(content["text"])
                elif kind == "error":
                    errors.append(f"{content['ename']}: {content['evalue']}")
                elif kind == "execute_reply":
                    assert content["status"] == "ok", errors
                    return "".join(stdout)
    finally:
        ws.close()
        await lab.app(server, f"api/kernels/{kernel['id']}", "DELETE")


async def run_in_terminal(lab: Lab, server: str, command: str, expect: str) -> str:
    """Open a terminal, type ``command``, return the output once ``expect`` shows up in it."""
    terminal = await lab.app_json(server, "api/terminals", "POST")
    ws = await lab.websocket(server, f"terminals/websocket/{terminal['name']}")
    output = ""
    try:
        ws.write_message(json.dumps(["stdin", command + "\r"]))
        async with asyncio.timeout(60):
            while expect not in output:
                raw = await ws.read_message()
                assert raw is not None, f"the terminal closed; it said: {output!r}"
                kind, *data = json.loads(raw)
                if kind == "stdout":
                    output += data[0]
    except TimeoutError:
        pytest.fail(f"{expect!r} never appeared in the terminal; it said: {output!r}")
    finally:
        ws.close()
        await lab.app(server, f"api/terminals/{terminal['name']}", "DELETE")
    return output


def pinned(environment: str, package: str) -> str:
    """The version of ``package`` that the environment's Dockerfile pins."""
    text = (IMAGES / environment / "Dockerfile").read_text()
    match = re.search(rf"\b{re.escape(package)}==([\w.]+)", text)
    assert match, f"{package} is not pinned in images/{environment}/Dockerfile"
    return match.group(1)


# --- python ---------------------------------------------------------------------------------


@shared_loop
async def test_python_terminal_through_the_proxy_imports_the_pinned_pandas(lab: Lab) -> None:
    await lab.launch("py", "python")
    try:
        version = pinned("python", "pandas")
        command = "python3 -c 'import pandas; print(\"pandas\", pandas.__version__)'"
        output = await run_in_terminal(lab, "py", command, expect=f"pandas {version}")
        assert f"pandas {version}" in output
    finally:
        await lab.remove("py")


# --- jupyter --------------------------------------------------------------------------------


NOTEBOOK = {
    "type": "notebook",
    "format": "json",
    "content": {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [
            {
                "id": "labdock-check",
                "cell_type": "code",
                "source": "print(6*7)",
                "metadata": {},
                "outputs": [],
                "execution_count": None,
            }
        ],
    },
}


@shared_loop
async def test_jupyter_runs_code_in_a_kernel_and_keeps_notebooks_across_a_relaunch(
    lab: Lab,
) -> None:
    await lab.launch("lab", "jupyter")
    try:
        me = await lab.app_json("lab", "api/me")
        assert me["identity"]["username"] == USER
        assert me["identity"]["display_name"] == USER

        assert (await run_in_kernel(lab, "lab", "print(6*7)")).strip() == "42"

        saved = await lab.app_json("lab", "api/contents/kept.ipynb", "PUT", NOTEBOOK)
        assert saved["type"] == "notebook"
        await lab.remove("lab")

        await lab.launch("lab", "jupyter")
        found = await lab.app_json("lab", "api/contents/kept.ipynb")
        assert found["content"]["cells"][0]["source"] == "print(6*7)"
        page = await lab.app("lab", "lab")
        assert page.code == 200 and f"/user/{USER}/lab/".encode() in page.body

        direct = f"{lab.target('lab')}/user/{USER}/lab/api/me"
        assert direct_status(direct) == 403
        assert direct_status(direct, token="wrong") == 403
    finally:
        await lab.remove("lab")


# --- tensorflow -----------------------------------------------------------------------------


@shared_loop
async def test_tensorflow_computes_in_a_kernel(lab: Lab) -> None:
    await lab.launch("tf", "tensorflow")
    try:
        code = "import tensorflow as tf; print(int(tf.reduce_sum(tf.ones([3, 3]))))"
        assert (await run_in_kernel(lab, "tf", code, timeout=180)).strip() == "9"
    finally:
        await lab.remove("tf")


# --- airflow --------------------------------------------------------------------------------


DAG = """
import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False)
def labdock_check():
    @task
    def answer():
        return 6 * 7

    answer()


labdock_check()
"""


def put_dag(client: docker.DockerClient, lab: Lab, hub_id: str) -> None:
    """Write the DAG into the user's home volume before Airflow starts, as the analyst."""
    volume = home_volume_name(hub_id, lab.user_id)
    labels = {**LABEL, "labdock.hub": hub_id, "labdock.user": str(lab.user_id)}
    client.volumes.create(volume, driver="local", labels=labels)
    image = latest_tag(client, "airflow")
    assert image, "no airflow image: run `labdock images build airflow`"
    client.containers.run(
        image,
        ["sh", "-c", 'mkdir -p ~/airflow/dags && printf %s "$DAG" > ~/airflow/dags/check.py'],
        environment={"DAG": DAG, "HOME": "/home/analyst"},
        volumes={volume: {"bind": "/home/analyst", "mode": "rw"}},
        labels={**LABEL, "labdock.hub": hub_id},
        network_mode="none",
        remove=True,
    )


@shared_loop
async def test_airflow_serves_its_ui_and_runs_a_dag_from_the_home_volume_and_keeps_history(
    lab: Lab, docker_client: docker.DockerClient, module_settings: Settings
) -> None:
    put_dag(docker_client, lab, module_settings.hub.id)
    await lab.launch("flows", "airflow")
    try:
        page = await lab.app("flows", "")
        assert page.code == 200, page.body[:300]
        assert f'<base href="/user/{USER}/flows/"'.encode() in page.body
        script = re.search(rb'src="\./(static/[^"]+\.js)"', page.body)
        assert script, page.body[:500]
        asset = await lab.app("flows", script.group(1).decode())
        assert asset.code == 200 and "javascript" in asset.headers["Content-Type"]

        deadline = time.monotonic() + 120
        while True:
            dags = await lab.app_json("flows", "api/v2/dags")
            if "labdock_check" in {d["dag_id"] for d in dags["dags"]}:
                break
            assert time.monotonic() < deadline, f"the DAG never showed up: {dags}"
            await asyncio.sleep(2)

        await lab.app_json("flows", "api/v2/dags/labdock_check", "PATCH", {"is_paused": False})
        run = await lab.app_json(
            "flows", "api/v2/dags/labdock_check/dagRuns", "POST", {"logical_date": None}
        )
        path = f"api/v2/dags/labdock_check/dagRuns/{run['dag_run_id']}"
        deadline = time.monotonic() + 180
        while (state := (await lab.app_json("flows", path))["state"]) not in ("success", "failed"):
            assert time.monotonic() < deadline, f"the run is still {state} after 180 s"
            await asyncio.sleep(2)
        assert state == "success"

        assert direct_status(f"{lab.target('flows')}/user/{USER}/flows/api/v2/dags") == 403

        # The metadata DB is in the home volume: a new container still knows the run.
        await lab.remove("flows")
        await lab.launch("flows", "airflow")
        assert (await lab.app_json("flows", path))["state"] == "success"
    finally:
        await lab.remove("flows")


# --- the catalog: pinned versions and refusals ------------------------------------------


@shared_loop
async def test_catalog_offers_each_built_image_pinned_by_its_digest(
    lab: Lab, docker_client: docker.DockerClient
) -> None:
    response = await lab.api("GET", "/environments")
    assert response.code == 200, response.body
    listed = {e["name"]: e for e in json.loads(response.body)}
    for name in ("python", "jupyter", "airflow", "tensorflow"):
        tag = latest_tag(docker_client, name)
        assert tag, f"no {name} image: run `labdock images build {name}`"
        assert listed[name]["version"] == tag.rpartition(":")[2]
        assert listed[name]["image"] == docker_client.images.get(tag).id
        assert listed[name]["gpu"] is False and listed[name]["contents"]
    if latest_tag(docker_client, "tensorflow-gpu") is None:  # build_by_default = false
        assert "tensorflow-gpu" not in listed
    else:
        assert listed["tensorflow-gpu"]["gpu"] is True


@shared_loop
async def test_unknown_and_forbidden_environments_are_refused(lab: Lab) -> None:
    unknown = await lab.api("POST", f"/users/{USER}/servers/no", {"environment": "rstudio"})
    assert unknown.code == 404, unknown.body
    assert json.loads(unknown.body)["message"] == "environment 'rstudio' is not in the catalog"
    deps = lab.hub.hub.deps
    assert deps.catalog_admin is not None
    await deps.teams.ensure("elsewhere")
    await deps.catalog_admin.store.update("python", teams=["elsewhere"])
    try:
        refused = await lab.api("POST", f"/users/{USER}/servers/no", {"environment": "python"})
        assert refused.code == 403, refused.body
        assert "offered only to certain teams" in json.loads(refused.body)["message"]
        listed = json.loads((await lab.api("GET", "/environments")).body)
        assert "python" not in {e["name"] for e in listed}
    finally:
        await deps.catalog_admin.store.update("python", teams=[])


# --- what every image promises --------------------------------------------------------------


@pytest.mark.parametrize("environment", ["jupyter", "tensorflow", "airflow"])
def test_server_refuses_to_start_without_a_secret(
    environment: str, docker_client: docker.DockerClient
) -> None:
    image = latest_tag(docker_client, environment)
    assert image, f"no {environment} image: run `labdock images build {environment}`"
    container = docker_client.containers.run(
        image, detach=True, labels=LABEL, environment={"LABDOCK_PREFIX": "/user/t/x/"}
    )
    try:
        assert container.wait(timeout=60)["StatusCode"] != 0
        assert "LABDOCK_SERVER_SECRET" in container.logs().decode()
    finally:
        container.remove(force=True)


def run_in_image(client: docker.DockerClient, environment: str, command: list[str]) -> str:
    """What ``command`` prints in a throwaway container of the environment's newest image."""
    image = latest_tag(client, environment)
    assert image, f"no {environment} image: run `labdock images build {environment}`"
    output = client.containers.run(
        image, command, labels=LABEL, network_mode="none", remove=True
    )
    return bytes(output).decode()


@pytest.mark.parametrize("environment", ["jupyter", "tensorflow", "airflow"])
def test_image_runs_as_the_analyst_and_keeps_no_build_ca(
    environment: str, docker_client: docker.DockerClient
) -> None:
    script = "id -u; stat -c %u ~; find / -xdev -name 'labdock-build-ca*' 2>/dev/null; true"
    output = run_in_image(docker_client, environment, ["sh", "-c", script])
    assert output.split() == ["1000", "1000"]


@pytest.mark.parametrize("environment", ["python", "jupyter", "tensorflow"])
def test_jupyter_server_images_leave_out_the_slow_optional_iri_checker(
    environment: str, docker_client: docker.DockerClient
) -> None:
    # rfc3987-syntax builds a Lark grammar at import: about 1 s of every server start.
    script = "import importlib.util as u; print(u.find_spec('rfc3987_syntax'))"
    output = run_in_image(docker_client, environment, ["python", "-c", script])
    assert output.strip() == "None"


@shared_loop
async def test_hub_routes_user_servers_through_its_proxy(lab: Lab) -> None:
    assert routes_user_paths(lab.hub.hub.app), "hub/app.py does not route /user/ to the proxy"


def test_jupyter_family_shares_one_start_script_and_identity_module() -> None:
    for name in SHARED_JUPYTER_FILES:
        first = (IMAGES / "jupyter" / name).read_bytes()
        for other in ("tensorflow", "tensorflow-gpu"):
            assert (IMAGES / other / name).read_bytes() == first, f"images/{other}/{name} differs"


def direct_status(url: str, *, token: str | None = None) -> int | None:
    """A GET straight to the container, bypassing the hub; the status, or None."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"token {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
