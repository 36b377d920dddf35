"""What one hub's servers on a Docker engine are doing now, found by label.

    observed = observe(client, hub_id="h1", network="labdock-h1")   # blocking
    [o.server_id for o in observed if o.running]                     # [42, 43]

A stopped container's exit code and OOM flag are read from its state, so that a
restarted hub can say why a server stopped while it was away.
"""

from __future__ import annotations

import logging

import docker
import docker.errors

from hub.backends.docker_config import HUB_LABEL, PORT_LABEL, ROLE_LABEL, SERVER_LABEL, USER_LABEL
from hub.domain.servers import Endpoint, Observed

log = logging.getLogger(__name__)


def observe(client: docker.DockerClient, hub_id: str, network: str) -> list[Observed]:
    """What runs now (blocking): one list call, plus an inspect per stopped container.

    Helpers of the hub (a volume measurer, a runtime copier) carry a role and are left out.
    """
    found: list[Observed] = []
    summaries = client.api.containers(all=True, filters={"label": f"{HUB_LABEL}={hub_id}"})
    for summary in summaries:
        labels = summary.get("Labels") or {}
        if ROLE_LABEL in labels:
            continue  # a helper of the hub's (a volume measurer, a runtime copier)
        try:
            server_id, user_id = int(labels[SERVER_LABEL]), int(labels[USER_LABEL])
            port = int(labels[PORT_LABEL])
        except (KeyError, ValueError):
            log.warning("container %s has no valid labdock labels", summary.get("Id"))
            continue
        cid = str(summary["Id"])
        name = str((summary.get("Names") or ["/"])[0]).lstrip("/")
        running = summary.get("State") == "running"
        endpoint: Endpoint | None = None
        exit_code: int | None = None
        oom = False
        if running:
            networks = (summary.get("NetworkSettings") or {}).get("Networks") or {}
            host = (networks.get(network) or {}).get("IPAddress")
            endpoint = Endpoint(str(host), port, cid, name) if host else None
        else:
            try:
                state = client.api.inspect_container(cid).get("State") or {}
            except docker.errors.NotFound:  # removed meanwhile
                continue
            exit_code = None if state.get("Status") == "created" else state.get("ExitCode")
            oom = bool(state.get("OOMKilled"))
        found.append(Observed(server_id, user_id, cid, name, running, endpoint, exit_code, oom))
    return found
