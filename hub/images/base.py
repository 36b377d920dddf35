"""The offline base image: a minimal Debian with Python, made without any registry.

    >>> tag = ensure_base(docker.from_env(), cache_dir=Path(".cache/labdock/base"),
    ...                   console=Console())
    >>> tag
    'labdock/base:3f9c0e1a2b4d'

On a machine that can reach a registry, environments build ``FROM`` their
upstream base (``python:3.11-slim-bookworm``). Here nothing can be pulled, so
the base is made from Debian packages: ``debootstrap --variant=minbase`` from
the mirror the host's apt already uses, cleaned of caches, and ``docker import``-ed.
The tag is a hash of everything that goes in (suite, mirror, packages and
``BUILD_VERSION``), so an existing tag means there is nothing to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import docker
import docker.errors
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from hub.domain.errors import LabdockError

# Bump when this script changes what ends up in the image, so the tag changes with it.
BUILD_VERSION = "1"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
REPOSITORY = "labdock/base"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
APT_DIR = Path("/etc/apt")

_IMAGE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["/bin/bash"]',
)
# Emptied (the folders stay) after debootstrap: nothing an image needs at run time.
_EMPTIED = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf/templates.dat-old",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "var/log",
    "tmp",
    "var/tmp",
)
# Kept empty in the tarball: the engine mounts its own at run time.
_MOUNTED = ("dev", "proc", "sys", "run")


def find_mirror(apt_dir: Path = APT_DIR, suite: str = SUITE) -> str | None:
    """The first http(s) Debian URI in the host's apt sources that serves ``suite``.

    Reads the one-line ``sources.list`` format and the deb822 ``*.sources`` format.
    """
    files = [apt_dir / "sources.list"]
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        entries = _deb822_entries(text) if path.suffix == ".sources" else _one_line_entries(text)
        for uris, suites in entries:
            if suite not in suites:
                continue
            for uri in uris:
                if uri.startswith(("http://", "https://")) and "debian" in uri:
                    return uri.rstrip("/")
    return None


def inputs_hash(*, suite: str, mirror: str, packages: Iterable[str]) -> str:
    """The sha256 (hex) of everything that decides what the base contains."""
    record = {
        "build_version": BUILD_VERSION,
        "mirror": mirror.rstrip("/"),
        "packages": sorted(set(packages)),
        "suite": suite,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def base_tag(mirror: str | None = None, apt_dir: Path = APT_DIR) -> str:
    """The tag the base has (or will have) for this mirror: ``labdock/base:<hash12>``."""
    chosen = mirror or find_mirror(apt_dir) or DEFAULT_MIRROR
    return f"{REPOSITORY}:{inputs_hash(suite=SUITE, mirror=chosen, packages=PACKAGES)[:12]}"


def ensure_base(
    client: docker.DockerClient,
    *,
    cache_dir: Path,
    console: Console,
    mirror: str | None = None,
) -> str:
    """Make sure the base image exists and return its tag; builds it only when it is missing.

    ``mirror`` overrides the Debian mirror read from the host's apt sources.
    Building needs root and ``debootstrap``; it takes about a minute and a
    half, and leaves nothing behind in ``cache_dir`` but a log on failure.
    """
    chosen = (mirror or find_mirror() or DEFAULT_MIRROR).rstrip("/")
    digest = inputs_hash(suite=SUITE, mirror=chosen, packages=PACKAGES)
    tag = f"{REPOSITORY}:{digest[:12]}"
    if image_exists(client, tag):
        console.print(f"[green]✓[/] base {tag} is up to date")
        return tag

    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise LabdockError("building the base image needs debootstrap: apt-get install debootstrap")
    if os.geteuid() != 0:
        raise LabdockError("building the base image needs root (debootstrap makes a chroot)")

    work = cache_dir.resolve() / digest[:12]
    _remove_tree(work)  # a half-made rootfs from an interrupted run
    rootfs, tarball = work / "rootfs", work / "rootfs.tar"
    rootfs.mkdir(parents=True)
    started = time.monotonic()
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task(f"base: debootstrap {SUITE} from {chosen}", total=None)
            log = work / "debootstrap.log"
            _debootstrap(debootstrap, rootfs, chosen, log, progress, task, console)
            progress.update(task, description="base: removing caches and docs")
            _clean_rootfs(rootfs)
            progress.update(task, description="base: packing the root filesystem")
            _pack(rootfs, tarball)
            _remove_tree(rootfs)
            progress.update(task, description=f"base: importing as {tag}")
            _import(client, tarball, tag, digest)
    finally:
        # Hundreds of MB; on failure only the log stays, for the error message to point at.
        _remove_tree(rootfs)
        tarball.unlink(missing_ok=True)
    _remove_tree(work)
    size = client.images.get(tag).attrs.get("Size", 0)
    console.print(
        f"[green]✓[/] base {tag} built in {time.monotonic() - started:.0f} s ({size / 1e6:.0f} MB)"
    )
    return tag


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    """Whether the engine has an image by this tag (or id)."""
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def _debootstrap(
    debootstrap: str,
    rootfs: Path,
    mirror: str,
    log_path: Path,
    progress: Progress,
    task: TaskID,
    console: Console,
) -> None:
    args = [
        debootstrap,
        "--variant=minbase",
        "--components=main",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(rootfs),
        mirror,
    ]
    tail: deque[str] = deque(maxlen=20)
    # A clean environment: the host's proxies and CA variables are not the chroot's business.
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    with (
        log_path.open("w") as log,
        subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            line = line.rstrip()
            tail.append(line)
            if line.startswith("I: "):
                progress.update(task, description=f"base: {escape(line[3:][:70])}")
        code = proc.wait()
    if code != 0:
        console.print(f"[red]debootstrap failed (exit {code}); last lines:[/]")
        for line in tail:
            console.print(f"  {escape(line)}", highlight=False)
        raise LabdockError(f"debootstrap of {SUITE} from {mirror} failed; full log in {log_path}")


def _remove_tree(path: Path) -> None:
    """``rm -rf`` that first detaches anything mounted inside (debootstrap mounts /proc,
    /sys and device nodes, and a killed run may leave them), so it never reaches the host's."""
    if not path.exists():
        return
    inside = [point for point in _mount_points() if point == path or path in point.parents]
    for point in sorted(inside, key=lambda p: len(p.parts), reverse=True):
        if subprocess.run(["umount", "--lazy", str(point)], check=False).returncode != 0:
            raise LabdockError(f"{point} is still mounted; unmount it, then remove {path}")
    shutil.rmtree(path)


def _mount_points() -> list[Path]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    # The fifth field is the mount point, with spaces and the like escaped in octal.
    return [
        Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]))
        for line in lines
        if len(line.split()) > 4
    ]


def _clean_rootfs(rootfs: Path) -> None:
    """Drop what only the build needed, and the host details debootstrap copied in."""
    for relative in _EMPTIED:
        target = rootfs / relative
        if target.is_dir() and not target.is_symlink():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        elif target.exists():
            target.unlink()
    for folder in ("var/lib/apt/lists/partial", "var/cache/apt/archives/partial"):
        (rootfs / folder).mkdir(parents=True, exist_ok=True)
    locale = rootfs / "usr/share/locale"
    if locale.is_dir():
        for child in locale.iterdir():  # translations; locale.alias stays
            if child.is_dir():
                shutil.rmtree(child)
    for leftover in rootfs.glob("var/lib/dpkg/*-old"):
        leftover.unlink()
    # The engine provides these per container; the host's must not leak into the image.
    (rootfs / "etc/resolv.conf").write_text("")
    (rootfs / "etc/hostname").write_text("")
    # Derived images that apt-get install should not keep package lists or .debs either.
    (rootfs / "etc/apt/apt.conf.d/docker-clean").write_text(
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/*.bin || true"; };\n'
        'Binary::apt::APT::Keep-Downloaded-Packages "false";\n'
    )


def _pack(rootfs: Path, tarball: Path) -> None:
    """A tar of the rootfs with numeric owners; mount points are kept as empty folders."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        top, _, rest = info.name.partition("/")
        if top in _MOUNTED and rest:
            return None
        info.uname = info.gname = ""
        return info

    with tarfile.open(tarball, "w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(rootfs.iterdir()):
            tar.add(child, arcname=child.name, recursive=True, filter=keep)


def _import(client: docker.DockerClient, tarball: Path, tag: str, digest: str) -> None:
    repository, _, version = tag.partition(":")
    changes = [*_IMAGE_CHANGES, f"LABEL labdock.inputs={digest} labdock.base.suite={SUITE}"]
    result = client.api.import_image_from_file(
        str(tarball), repository=repository, tag=version, changes=changes
    )
    for line in str(result).splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("error"):
            raise LabdockError(f"docker import of the base failed: {message['error']}")
    if not image_exists(client, tag):
        raise LabdockError(f"docker import of the base did not produce {tag}: {result}")


def _one_line_entries(text: str) -> list[tuple[list[str], list[str]]]:
    entries = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            entries.append(([words[0]], [words[1]]))
    return entries


def _deb822_entries(text: str) -> list[tuple[list[str], list[str]]]:
    entries = []
    for stanza in _deb822_stanzas(text):
        if "deb" not in stanza.get("types", "").split():
            continue
        if stanza.get("enabled", "yes").strip().lower() == "no":
            continue
        entries.append((stanza.get("uris", "").split(), stanza.get("suites", "").split()))
    return entries


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
        elif raw[0] in " \t" and key:
            current[key] += " " + raw.strip()
        elif ":" in raw:
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas
