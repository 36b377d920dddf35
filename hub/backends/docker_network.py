"""The hub's container network: one internal bridge, inter-container traffic off.

    ensure_network(client, name="labdock-h1", hub_id="h1", internal=True, labels={})  # blocking
    bridge_name("h1")   # "ld-h1": the host interface, for a firewall rule

Blocking functions: the backend runs them on its executor. A network of that
name that another hub (or a person) made, or that does not isolate servers as
configured, is refused rather than used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import docker
import docker.errors as derr

from hub.backends.docker_config import BRIDGE_NAME_OPTION, HUB_LABEL, ICC_OPTION
from hub.domain.errors import BackendUnavailable, Conflict


def bridge_name(hub_id: str) -> str:
    """The host interface of the hub's network (Linux caps names at 15 characters)."""
    if len(hub_id) <= 12:
        return f"ld-{hub_id}"
    return "ld-" + hashlib.sha256(hub_id.encode()).hexdigest()[:12]


def ensure_network(
    client: docker.DockerClient,
    *,
    name: str,
    hub_id: str,
    internal: bool,
    labels: Mapping[str, str],
) -> None:
    """Create the network unless it exists; refuse one that is not the hub's (blocking)."""
    for attempt in (1, 2):
        found = [n for n in client.networks.list(names=[name]) if n.name == name]
        if found:
            check_network(found[0].attrs, name=name, hub_id=hub_id, internal=internal)
            return
        try:
            client.networks.create(
                name,
                driver="bridge",
                internal=internal,
                options={ICC_OPTION: "false", BRIDGE_NAME_OPTION: bridge_name(hub_id)},
                labels={**labels, HUB_LABEL: hub_id},
                check_duplicate=True,
            )
            return
        except derr.APIError as exc:
            if exc.status_code != 409 or attempt == 2:
                raise BackendUnavailable(
                    f"could not create network {name}: {exc.explanation or exc}"
                ) from exc


def check_network(attrs: Mapping[str, Any], *, name: str, hub_id: str, internal: bool) -> None:
    """Refuse a network that is not this hub's, or that does not isolate as configured."""
    fix = f"remove it (docker network rm {name}) or configure another name"
    if (attrs.get("Labels") or {}).get(HUB_LABEL) != hub_id:
        raise Conflict(f"network {name} exists but is not this hub's; {fix}")
    icc = (attrs.get("Options") or {}).get(ICC_OPTION, "true")
    if icc != "false" or bool(attrs.get("Internal")) != internal:
        raise Conflict(
            f"network {name} does not isolate servers as configured "
            f"(internal={attrs.get('Internal')}, icc={icc}); {fix}"
        )
