"""Workspaces may not reach services on the host (``backend.host_firewall``, on by default).

A red-team pass found a listener on the host's 0.0.0.0 answering from inside a user
container, on the bridge's gateway and on the host's other addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from hub.app import build_hub
from hub.backends.docker_network import bridge_name
from hub.backends.firewall import HostFirewall, chain_name, rules_for
from hub.config import Settings
from tests.busybox_image import ensure_test_image

PROBE = (
    "for ip in $TARGETS; do "
    "if (sleep 1 | nc -w 2 $ip $PORT) 2>/dev/null | grep -q $TOKEN; "
    'then echo "$ip open"; else echo "$ip closed"; fi; done'
)


@contextlib.contextmanager
def host_listener(token: str) -> Iterator[int]:
    """A TCP service on every host address (0.0.0.0), answering ``token``."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            with conn, contextlib.suppress(OSError):
                conn.sendall(token.encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        server.close()


def host_addresses(skip: set[str]) -> list[str]:
    """The host's IPv4 addresses other than loopback and ``skip``, leaving out the bridges
    of other Docker networks (``br-*``, ``ld-*``), which come and go with other tests."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True)
    found = []
    for line in out.stdout.splitlines():
        words = line.split()
        interface, address = words[1], words[3].split("/")[0]
        if interface.startswith(("br-", "ld-")) or address.startswith("127."):
            continue
        if address not in skip:
            found.append(address)
    assert found, out.stdout
    return found


def probe(
    client: docker.DockerClient, image: str, network: str, hub_id: str, **env: Any
) -> dict[str, str]:
    """From a container on the hub's network: which targets answer (``open``) or not."""
    container = client.containers.run(
        image,
        ["sh", "-c", PROBE],
        environment={k.upper(): str(v) for k, v in env.items()},
        network=network,
        labels={"labdock.test": "1", "labdock.hub": hub_id},
        detach=True,
    )
    try:
        container.wait(timeout=60)
        lines = container.logs().decode().split("\n")
    finally:
        container.remove(force=True)
    return dict(line.split() for line in lines if line.strip())  # type: ignore[misc]


def jumps(chain: str) -> int:
    listing = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True).stdout
    return sum(1 for line in listing.splitlines() if line.endswith(f"-j {chain}"))


def chain_exists(chain: str) -> bool:
    return subprocess.run(["iptables", "-S", chain], capture_output=True).returncode == 0


async def reachable_from_a_workspace(
    settings: Settings, docker_client: docker.DockerClient, hub_id: str
) -> dict[str, str]:
    token = "labdock-probe-" + secrets.token_hex(4)
    image = ensure_test_image(docker_client)
    loop = asyncio.get_running_loop()
    with host_listener(token) as port:
        async with build_hub(settings) as built:
            assert built.backend is not None
            await built.backend.ensure_network()
            network = docker_client.networks.get(built.backend.network)
            gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
            targets = [gateway, *host_addresses({gateway})]
            seen = await loop.run_in_executor(
                None,
                lambda: probe(
                    docker_client,
                    image,
                    network.name,
                    hub_id,
                    targets=" ".join(targets),
                    port=port,
                    token=token,
                ),
            )
            assert set(seen) == set(targets), seen
            if settings.backend.host_firewall:
                assert built.firewall is not None and built.firewall.state == "on"
                assert jumps(chain_name(hub_id)) == 1
    return seen


async def test_workspaces_reach_host_services_when_the_firewall_is_off(
    with_settings: Any, docker_client: docker.DockerClient, hub_id: str
) -> None:
    seen = await reachable_from_a_workspace(
        with_settings(backend={"host_firewall": False}), docker_client, hub_id
    )
    assert set(seen.values()) == {"open"}, seen  # the attack this setting stops


async def test_workspaces_cannot_reach_host_services_and_the_rules_go_at_close(
    settings: Settings, docker_client: docker.DockerClient, hub_id: str
) -> None:
    assert settings.backend.host_firewall  # on by default
    seen = await reachable_from_a_workspace(settings, docker_client, hub_id)
    assert set(seen.values()) == {"closed"}, seen
    assert not chain_exists(chain_name(hub_id)) and jumps(chain_name(hub_id)) == 0


async def test_the_hub_still_reaches_its_servers_through_the_firewall(
    settings: Settings, docker_client: docker.DockerClient
) -> None:
    image = ensure_test_image(docker_client)
    async with build_hub(settings) as built:
        assert built.firewall is not None and built.firewall.state == "on"
        from tests.conftest import listening
        from tests.test_servers_api import busybox_env, user_api

        await built.deps.catalog.add(busybox_env(image))  # type: ignore[attr-defined]
        async with listening(built) as running:
            alice = await user_api(running, "alice")
            launched = await alice.call("POST", "/users/alice/server", {"environment": "busybox"})
            assert launched.code == 201, launched.body  # readiness probes came back
            page = await running.fetch(
                "/user/alice/", headers={"Authorization": f"token {alice.token}"}
            )
            assert page.code == 200 and page.body.strip() == b"ok"


def test_rules_left_by_a_killed_hub_are_replaced_not_doubled(hub_id: str) -> None:
    left = HostFirewall(hub_id=hub_id, interface=bridge_name(hub_id))
    assert left.install() == "on"
    subprocess.run(["iptables", "-I", "INPUT", *rules_for(hub_id, bridge_name(hub_id)).jump[1:]])
    assert jumps(chain_name(hub_id)) == 2  # as if two hubs of this id had been killed
    again = HostFirewall(hub_id=hub_id, interface=bridge_name(hub_id))
    try:
        assert again.install() == "on"
        assert jumps(chain_name(hub_id)) == 1
    finally:
        again.remove()
    assert not chain_exists(chain_name(hub_id)) and jumps(chain_name(hub_id)) == 0


def test_without_iptables_the_hub_says_the_firewall_is_unavailable(hub_id: str) -> None:
    wall = HostFirewall(hub_id=hub_id, interface="ld-x", tools=("no-such-iptables",))
    assert wall.install() == "unavailable: no-such-iptables is not installed"
    wall.remove()


def test_the_chain_name_fits_iptables_for_every_hub_id() -> None:
    assert chain_name("h1") == "LABDOCK-h1-IN"
    assert len(chain_name("a" * 31)) <= 28


@pytest.fixture(autouse=True)
def no_rules_left(hub_id: str) -> Iterator[None]:
    yield
    wall = HostFirewall(hub_id=hub_id, interface=bridge_name(hub_id))
    wall._clear("iptables")
