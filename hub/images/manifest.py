"""What an environment folder declares about its image, read from ``manifest.toml``.

    >>> manifests = load_all(images_dir())
    >>> manifests["python"].port
    8888
    >>> manifests["python"].default.memory
    2147483648

A manifest looks like this (every key is checked; unknown keys are refused)::

    description = "Python with numpy, pandas, matplotlib and scikit-learn"
    version = "jupyter_server 2.21.1"
    port = 8888
    command = ["/opt/labdock/start.sh"]
    prefix = "keep"                 # the app serves under /user/<name>/<server>/
    readiness_path = "api/status"   # relative to the prefix
    shm_size = "1G"
    upstream_base = "python:3.11-slim-bookworm"
    # build_by_default = false      # only when named: `labdock images build <name>`

    [resources.default]
    cpus = 1
    memory = "2G"

    [resources.maximum]
    cpus = 4
    memory = "16G"
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import hub
from hub.domain.catalog import EnvironmentManifest
from hub.domain.errors import ConfigError, LabdockError
from hub.domain.manifest import ManifestReader

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.toml"


def load_manifest(folder: Path) -> EnvironmentManifest:
    """Read and validate ``folder/manifest.toml``; the environment is named after the folder."""
    path = folder / MANIFEST_FILE
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return ManifestReader(str(path)).manifest(data, folder.name)


def load_all(images_dir: Path) -> dict[str, EnvironmentManifest]:
    """Every environment under ``images_dir``: each subfolder holding a manifest, by name."""
    if not images_dir.is_dir():
        raise ConfigError(f"{images_dir}: the images folder does not exist")
    found: dict[str, EnvironmentManifest] = {}
    for folder in sorted(p for p in images_dir.iterdir() if p.is_dir()):
        if (folder / MANIFEST_FILE).is_file():
            manifest = load_manifest(folder)
            found[manifest.name] = manifest
    return found


def shipped_manifests() -> dict[str, EnvironmentManifest]:
    """The environments shipped with labdock, or none (with a warning) when unreadable."""
    try:
        return load_all(images_dir())
    except LabdockError as exc:
        log.warning("environment manifests unreadable: %s", exc.message)
        return {}


def images_dir() -> Path:
    """The environments shipped with labdock: in the wheel (``hub/_images``) or the checkout."""
    package = Path(hub.__file__).resolve().parent
    for candidate in (package / "_images", package.parent / "images"):
        if candidate.is_dir():
            return candidate
    raise ConfigError(
        f"no images folder found next to {package} (looked for _images and ../images)"
    )
