"""The names of what one hub keeps on a Docker engine, made from ids only.

    container_name("h1", 42)                 # "labdock-h1-s42"
    home_volume_name("h1", 7)                # "labdock-h1-u7-home"
    team_volume_name("h1", 3)                # "labdock-h1-t3-shared"
    network_name("h1")                       # "labdock-h1"
    runtime_volume_name("h1", "sha256:3f2a...", "/opt/labdock")   # "labdock-h1-rt-3f2a...-1c0e..."

The domain knows servers, users and teams by their ids; only this backend turns them
into engine names. A name holds the hub's id, so that hubs sharing an engine keep their
own, and never a user's or a team's name, which may change (a renamed user keeps their
home). Whatever a name does not say, the object's labels do (``docker_config``).
"""

from __future__ import annotations

import hashlib

PREFIX = "labdock"


def network_name(hub_id: str) -> str:
    """The hub's own bridge network."""
    return f"{PREFIX}-{hub_id}"


def container_name(hub_id: str, server_id: int) -> str:
    """A server's container: one per server, so that a second start finds the first."""
    return f"{PREFIX}-{hub_id}-s{server_id}"


def home_volume_name(hub_id: str, user_id: int) -> str:
    """The user's home volume: keyed by the immutable user id, never by name."""
    return f"{PREFIX}-{hub_id}-u{user_id}-home"


def team_volume_name(hub_id: str, team_id: int) -> str:
    """A team's shared volume: keyed by the team's id, so that renaming a team keeps it."""
    return f"{PREFIX}-{hub_id}-t{team_id}-shared"


def runtime_volume_name(hub_id: str, image_id: str, path: str) -> str:
    """A runtime copy (``docker_runtime``): ``labdock-<hub>-rt-<12 hex of the image id>-<8 hex
    of the path>``."""
    image = image_id.removeprefix("sha256:")[:12]
    where = hashlib.sha256(path.encode()).hexdigest()[:8]
    return f"{PREFIX}-{hub_id}-rt-{image}-{where}"
