"""Environment images, built from ``images/<name>/`` and tagged by a hash of their inputs.

    >>> built = build_images(docker.from_env(), ["python"], images_dir=images_dir(),
    ...                      cache_dir=Path(".cache/labdock"), console=Console())
    >>> built[0].tag, built[0].skipped
    ('labdock/python:5be0c1d24a7e', False)

With no names, every environment is built except those whose manifest says
``build_by_default = false`` (``tensorflow-gpu``: several GB of CUDA wheels).
``upstream=True`` builds FROM each manifest's official ``upstream_base`` rather
than the offline ``labdock/base`` (on a machine that can pull it).

The tag is ``labdock/<name>:<hash12>``, where the hash covers every file of the
environment's folder and the base image's tag. An existing tag therefore means
the image is current, and the build is skipped. There is no registry, so the
catalog pins the local content-addressed image id (``sha256:...``), the digest
each ``BuiltImage`` records; at its next start the hub adds it to the catalog as
a new version labelled ``<hash12>``, keeping the earlier ones.

A build never leaves an earlier image untagged (``docker image prune`` would
remove it while catalog versions still run it): changed inputs give a new tag,
and a forced rebuild of the same inputs moves the tag only after tagging the
image it replaces ``labdock/<name>:<hash12>-<id8>``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from hub.domain.errors import ConfigError, LabdockError
from hub.images.base import base_tag, ensure_base, image_exists
from hub.images.manifest import images_dir as default_images_dir
from hub.images.manifest import load_all, load_manifest

# Bump when the way a context is assembled changes what an image contains.
BUILD_VERSION = "1"
CA_IN_CONTEXT = "labdock-build-ca.crt"
# Where distributions keep the system bundle. Environment variables are ignored on
# purpose: on a host behind an inspecting egress they may name a bundle for one tool only.
CA_BUNDLES = (
    Path("/etc/ssl/certs/ca-certificates.crt"),
    Path("/etc/pki/tls/certs/ca-bundle.crt"),
    Path("/etc/ssl/cert.pem"),
)


@dataclass(frozen=True)
class BuiltImage:
    """The outcome for one environment: its tag, its local image id, and whether it was built."""

    name: str
    tag: str
    image_id: str
    skipped: bool
    seconds: float
    size_bytes: int


def content_hash(folder: Path, base: str) -> str:
    """The sha256 (hex) of an environment's inputs: its files and the base image's tag.

    Paths and bytes count, and whether a file is executable; modification times do not.
    """
    digest = hashlib.sha256()

    def feed(data: bytes) -> None:
        # Length-prefixed, so that moving bytes between a name and a file changes the hash.
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)

    feed(f"labdock-environment/{BUILD_VERSION}".encode())
    feed(base.encode())
    for path in _files(folder):
        feed(path.relative_to(folder).as_posix().encode())
        feed(b"x" if os.access(path, os.X_OK) else b"-")
        feed(path.read_bytes())
    return digest.hexdigest()


def latest_tag(
    client: docker.DockerClient,
    name: str,
    *,
    folder: Path | None = None,
    mirror: str | None = None,
) -> str | None:
    """The tag built from the environment's current files, or None when it is not built yet.

    An image built FROM the offline base and one built FROM the manifest's
    ``upstream_base`` (``labdock images build --upstream``) both count; when
    both exist, the newer one wins.
    """
    folder = folder or default_images_dir() / name
    bases = [base_tag(mirror)]
    try:
        upstream = load_manifest(folder).upstream_base
    except ConfigError:
        upstream = None
    if upstream:
        bases.append(upstream)
    found: list[tuple[str, str]] = []
    for base in bases:
        tag = f"labdock/{name}:{content_hash(folder, base)[:12]}"
        try:
            found.append((str(client.images.get(tag).attrs.get("Created", "")), tag))
        except docker.errors.ImageNotFound:
            continue
    return max(found)[1] if found else None


def build_images(
    client: docker.DockerClient,
    names: Sequence[str] | None,
    *,
    images_dir: Path,
    cache_dir: Path,
    console: Console,
    force: bool = False,
    upstream: bool = False,
) -> list[BuiltImage]:
    """Build the named environments, skipping current ones.

    Without names, every environment whose manifest does not say
    ``build_by_default = false`` is built; the others are listed as left out.
    The offline base is made first when missing, under ``cache_dir / "base"``;
    with ``upstream``, each environment is built FROM its manifest's official
    ``upstream_base`` instead, which the engine pulls when it lacks it (a
    connected machine). ``force`` rebuilds without the layer cache even when
    the tag exists.
    """
    manifests = load_all(images_dir)
    if names:
        selected = list(dict.fromkeys(names))
    else:
        selected = sorted(name for name, m in manifests.items() if m.build_by_default)
        for name in sorted(set(manifests) - set(selected)):
            console.print(
                f"[dim]· {name}: not built by default; `labdock images build {name}` builds it[/]"
            )
    unknown = [name for name in selected if name not in manifests]
    if unknown:
        known = ", ".join(sorted(manifests)) or "none"
        raise ConfigError(
            f"unknown environment {', '.join(map(repr, unknown))} in {images_dir}; known: {known}"
        )
    if upstream:
        bare = [name for name in selected if not manifests[name].upstream_base]
        if bare:
            raise ConfigError(
                f"{images_dir / bare[0] / 'manifest.toml'}: key 'upstream_base': is required "
                "to build FROM the official image (--upstream)"
            )
        bases = {name: str(manifests[name].upstream_base) for name in selected}
    else:
        base = ensure_base(client, cache_dir=cache_dir / "base", console=console)
        bases = dict.fromkeys(selected, base)
    return [
        _build_one(client, name, images_dir / name, bases[name], console=console, force=force)
        for name in selected
    ]


def _build_one(
    client: docker.DockerClient,
    name: str,
    folder: Path,
    base: str,
    *,
    console: Console,
    force: bool,
) -> BuiltImage:
    started = time.monotonic()
    inputs = content_hash(folder, base)
    tag = f"labdock/{name}:{inputs[:12]}"
    if not force and image_exists(client, tag):
        image = client.images.get(tag)
        console.print(f"[green]✓[/] {name}: {tag} is up to date")
        return BuiltImage(
            name=name,
            tag=tag,
            image_id=str(image.id),
            skipped=True,
            seconds=time.monotonic() - started,
            size_bytes=int(image.attrs.get("Size", 0)),
        )

    replaced = str(client.images.get(tag).id) if image_exists(client, tag) else None
    with tempfile.TemporaryDirectory(prefix=f"labdock-build-{name}-") as context:
        _assemble_context(folder, Path(context))
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task(f"{name}: sending the build context", total=None)
            stream = client.api.build(
                path=context,
                tag=tag,
                rm=True,
                forcerm=True,
                nocache=force,
                pull=False,
                decode=True,
                buildargs={"BASE": base},
                labels={"labdock.environment": name, "labdock.inputs": inputs},
            )
            _follow(stream, name, progress, task, console)

    image = client.images.get(tag)
    if replaced and replaced != image.id:
        kept = f"{inputs[:12]}-{replaced.removeprefix('sha256:')[:8]}"
        client.images.get(replaced).tag(f"labdock/{name}", kept)
        console.print(f"[dim]· {name}: the image it replaces stays as labdock/{name}:{kept}[/]")
    seconds = time.monotonic() - started
    size = int(image.attrs.get("Size", 0))
    console.print(f"[green]✓[/] {name}: built {tag} in {seconds:.0f} s ({size / 1e6:.0f} MB)")
    return BuiltImage(
        name=name, tag=tag, image_id=str(image.id), skipped=False, seconds=seconds, size_bytes=size
    )


def _follow(stream: Any, name: str, progress: Progress, task: TaskID, console: Console) -> None:
    """Show the current step while the engine builds; on an error, show where and why."""
    step = "(before the first step)"
    tail: deque[str] = deque(maxlen=25)
    try:
        for message in stream:
            if not isinstance(message, dict):
                continue
            if "error" in message:
                _report_failure(console, name, step, tail)
                raise LabdockError(f"building {name} failed at {step}: {message['error'].strip()}")
            text = str(message.get("stream") or message.get("status") or "")
            for line in text.splitlines():
                line = line.rstrip()
                if not line:
                    continue
                tail.append(line)
                if line.startswith("Step "):
                    step = " ".join(line.split())  # a RUN's continuation lines, on one line
                    progress.update(task, description=f"{name}: {escape(step[:90])}")
                elif not line.startswith(" ---> "):
                    short = escape(line.strip()[:60])
                    progress.update(
                        task, description=f"{name}: {escape(step[:50])}\n  [dim]{short}[/]"
                    )
    except docker.errors.APIError as exc:
        _report_failure(console, name, step, tail)
        raise LabdockError(f"building {name} failed at {step}: {exc.explanation or exc}") from exc


def _report_failure(console: Console, name: str, step: str, tail: deque[str]) -> None:
    console.print(f"[red]✗ {escape(name)}: the build failed at[/] {escape(step)}")
    for line in tail:
        console.print(f"  {escape(line)}", highlight=False)


def _assemble_context(folder: Path, context: Path) -> None:
    """The folder's files plus the host's CA bundle, so pip can get through an inspecting egress."""
    for path in _files(folder):
        target = context / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    bundle = next((p for p in CA_BUNDLES if p.is_file()), None)
    if bundle is not None:
        shutil.copyfile(bundle, context / CA_IN_CONTEXT)


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"{folder}: the environment folder does not exist")
    found = [
        Path(root) / filename
        for root, _dirs, filenames in os.walk(folder)
        for filename in filenames
        if (Path(root) / filename).is_file()
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())
