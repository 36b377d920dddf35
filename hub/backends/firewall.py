"""Keep workspaces off the host's own services: refuse what the hub's bridge sends to the host.

    wall = HostFirewall(hub_id="h1", interface=bridge_name("h1"))
    wall.install()      # blocking; wall.state: "on", or "unavailable: <why>"
    ...
    wall.remove()       # at close; the next install also clears what a killed hub left

    guard = HostGuard(wall, executor=pool)   # the same, as a hub service (``hub.app``)

A container on the hub's bridge reaches every address of the host (the
bridge's gateway and the host's other addresses) and so every host service
listening on 0.0.0.0. Packets a container sends to the host enter the host's
``INPUT`` chain through the bridge interface (``ld-<hub id>``), so one jump
there covers every local address, whatever the network's subnet:

    -I INPUT 1 -i ld-h1 -m comment --comment "labdock h1: ..." -j LABDOCK-h1-IN
    -A LABDOCK-h1-IN -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
    -A LABDOCK-h1-IN -p tcp -j REJECT --reject-with tcp-reset
    -A LABDOCK-h1-IN -j REJECT

Replies to connections the hub opens (readiness probes, the proxy) are
``ESTABLISHED`` and pass on to the rest of ``INPUT`` unchanged. DNS inside a
container asks Docker's resolver in the container's own namespace, which this
does not touch. Traffic between containers and to the outside is Docker's
business (``FORWARD``), also untouched. Refused rather than dropped, so that a
client in a workspace fails at once instead of hanging.

The same rules go to ``ip6tables`` when it is there (best effort: the hub's
network has no IPv6 unless an operator enabled it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

log = logging.getLogger(__name__)

TOOLS = ("iptables", "ip6tables")
_SEARCH = "/usr/sbin:/sbin:/usr/bin:/bin"
TIMEOUT_S = 20.0


def chain_name(hub_id: str) -> str:
    """The hub's own chain: iptables caps chain names at 28 characters."""
    tag = hub_id if len(hub_id) <= 12 else hashlib.sha256(hub_id.encode()).hexdigest()[:12]
    return f"LABDOCK-{tag}-IN"


class FirewallError(Exception):
    """An iptables command failed; the message says which and why."""


@dataclass(frozen=True)
class Rules:
    """What the hub installs, as iptables arguments (the table is ``filter``)."""

    chain: str
    jump: tuple[str, ...]
    body: tuple[tuple[str, ...], ...]


def rules_for(hub_id: str, interface: str) -> Rules:
    """The chain, its rules, and the jump to it from ``INPUT`` (pure: for tests to read)."""
    chain = chain_name(hub_id)
    comment = f"labdock {hub_id}: workspaces may not reach host services"
    return Rules(
        chain=chain,
        jump=("INPUT", "-i", interface, "-m", "comment", "--comment", comment, "-j", chain),
        body=(
            ("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"),
            ("-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"),
            ("-j", "REJECT"),
        ),
    )


class HostFirewall:
    """Installs and removes the rules of one hub (blocking calls: run them on an executor)."""

    def __init__(self, *, hub_id: str, interface: str, tools: Sequence[str] = TOOLS) -> None:
        self._rules = rules_for(hub_id, interface)
        self._hub_id = hub_id
        self._tools = tuple(tools)
        self._installed: list[str] = []
        self.state = "off"

    @property
    def chain(self) -> str:
        return self._rules.chain

    def install(self) -> str:
        """Clear what an earlier hub of this id left, then install; return the new state.

        Never raises: when the rules cannot be installed (no iptables, no
        permission) ``state`` says why and the hub runs on without them.
        """
        first = self._tools[0]
        path = _which(first)
        if path is None:
            self.state = f"unavailable: {first} is not installed"
            return self.state
        try:
            self._clear(path)
            self._apply(path)
        except FirewallError as exc:
            self.state = f"unavailable: {exc}"
            return self.state
        self._installed.append(path)
        for tool in self._tools[1:]:
            extra = _which(tool)
            if extra is None:
                continue
            try:
                self._clear(extra)
                self._apply(extra)
                self._installed.append(extra)
            except FirewallError as exc:
                log.info("host firewall: %s rules not installed: %s", tool, exc)
        self.state = "on"
        return self.state

    def remove(self) -> None:
        """Remove the jump and the chain (idempotent)."""
        for path in self._installed:
            try:
                self._clear(path)
            except FirewallError as exc:
                log.warning("host firewall: could not remove the rules: %s", exc)
        self._installed = []
        if self.state == "on":
            self.state = "off"

    def _apply(self, path: str) -> None:
        rules = self._rules
        _run(path, "-N", rules.chain)
        for rule in rules.body:
            _run(path, "-A", rules.chain, *rule)
        _run(path, "-I", rules.jump[0], "1", *rules.jump[1:])

    def _clear(self, path: str) -> None:
        chain = self._rules.chain
        # Every jump to the chain, however many a killed hub left, as iptables prints them.
        listing = _run(path, "-S", "INPUT").stdout
        for line in listing.splitlines():
            if not line.startswith("-A INPUT "):
                continue  # "# Warning: iptables-legacy tables present", policies
            words = shlex.split(line)
            if words[:2] == ["-A", "INPUT"] and words[-2:] == ["-j", chain]:
                _run(path, "-D", *words[1:])
        if _run(path, "-S", chain, check=False).returncode == 0:
            _run(path, "-F", chain)
            _run(path, "-X", chain)


class HostGuard:
    """The host firewall as a hub service: installed at start, removed at close.

    With no firewall (``backend.host_firewall`` off, or an engine on another
    machine) it only warns, at start, that workspaces can reach host services.
    A firewall that cannot be installed (not root, no iptables) warns too, and
    the hub runs on.
    """

    name = "host-firewall"

    def __init__(
        self, firewall: HostFirewall | None, *, executor: Executor, off_because: str = ""
    ) -> None:
        self.firewall = firewall
        self._executor = executor
        self._off_because = off_because

    async def start(self) -> None:
        if self.firewall is None:
            log.warning("%s", self._off_because)
            return
        loop = asyncio.get_running_loop()
        state = await loop.run_in_executor(self._executor, self.firewall.install)
        if state == "on":
            log.info("host firewall on: chain %s", self.firewall.chain)
        else:
            log.warning(
                "host firewall %s; workspaces can reach host services listening on 0.0.0.0 "
                "(run the hub as root with iptables, or set backend.host_firewall = false)",
                state,
            )

    async def close(self) -> None:
        if self.firewall is not None:
            # The default executor: the hub's own is drained after services close.
            await asyncio.get_running_loop().run_in_executor(None, self.firewall.remove)


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path=_SEARCH)


def _run(path: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [path, "-w", "10", *args]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FirewallError(f"{shlex.join(command)}: {exc}") from exc
    if check and done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise FirewallError(f"{shlex.join(command)}: {why[-1] if why else done.returncode}")
    return done
