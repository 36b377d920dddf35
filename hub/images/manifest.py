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
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hub
from hub.domain.catalog import (
    DEFAULT_HOME,
    DEFAULT_PIDS_LIMIT,
    DEFAULT_SHM_SIZE,
    EnvironmentManifest,
)
from hub.domain.errors import ConfigError, InvalidInput, LabdockError
from hub.domain.resources import Resources, parse_memory

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.toml"

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_TOP_KEYS = frozenset(
    {
        "name",
        "description",
        "version",
        "port",
        "command",
        "prefix",
        "readiness_path",
        "resources",
        "gpu",
        "gpu_shareable",
        "pids_limit",
        "shm_size",
        "home",
        "upstream_base",
        "build_by_default",
    }
)
_REQUIRED = ("description", "version", "port", "command", "prefix", "readiness_path", "resources")
_RESOURCE_KEYS = frozenset({"cpus", "memory", "gpus"})
# What an admin gives to define an environment's version through the API: the manifest's
# keys, less those about building it; "contents" is the manifest's "version" text.
REQUEST_KEYS = (_TOP_KEYS - {"name", "version", "upstream_base", "build_by_default"}) | {"contents"}


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
    return _Reader(str(path)).manifest(data, folder.name)


def manifest_from_request(body: Mapping[str, Any], name: str) -> EnvironmentManifest:
    """An environment version defined in an API request, checked as a manifest is.

    Errors are ``InvalidInput`` naming the key; ``readiness_path`` may be empty
    (the app answers at its prefix), and ``contents`` (what the image holds,
    shown to users) defaults to nothing.
    """
    unknown = sorted(set(body) - REQUEST_KEYS)
    if unknown:
        allowed = ", ".join(sorted(REQUEST_KEYS))
        raise InvalidInput(f"unknown field {unknown[0][:40]!r} (allowed: {allowed})")
    data = {key: value for key, value in body.items() if key != "contents"}
    contents = body.get("contents", "")
    if not isinstance(contents, str):
        raise InvalidInput("contents: expected a string")
    data["version"] = contents or "-"
    reader = _Reader("the request", error=InvalidInput, empty_readiness=True)
    return reader.manifest(data, name)


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


class _Reader:
    """Validates one manifest's table, naming the file and the key in every error."""

    def __init__(
        self,
        path: str,
        *,
        error: type[LabdockError] = ConfigError,
        empty_readiness: bool = False,
    ) -> None:
        self.path = path
        self.error = error
        self.empty_readiness = empty_readiness

    def fail(self, key: str, problem: str) -> LabdockError:
        return self.error(f"{self.path}: key '{key}': {problem}")

    def manifest(self, data: dict[str, Any], folder_name: str) -> EnvironmentManifest:
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            allowed = ", ".join(sorted(_TOP_KEYS))
            raise self.fail(unknown[0], f"unknown key (allowed: {allowed})")
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise self.fail(missing[0], "is required")

        name = self.text(data, "name", default=folder_name)
        if name != folder_name:
            raise self.fail("name", f"must match its folder name {folder_name!r}, got {name!r}")
        if not _NAME.match(name):
            raise self.fail("name", "use lowercase letters, digits and '-' (at most 63)")

        port = self.integer(data, "port")
        if not 1 <= port <= 65535:
            raise self.fail("port", f"must be between 1 and 65535, got {port}")

        command = data["command"]
        if not (isinstance(command, list) and command and all(isinstance(c, str) for c in command)):
            raise self.fail("command", "must be a non-empty list of strings")

        prefix = self.text(data, "prefix")
        if prefix not in ("keep", "strip"):
            raise self.fail("prefix", f"must be 'keep' or 'strip', got {prefix!r}")

        readiness = (
            data.get("readiness_path")
            if self.empty_readiness and data.get("readiness_path") == ""
            else self.text(data, "readiness_path")
        )
        assert isinstance(readiness, str)
        if readiness.startswith("/") or "://" in readiness:
            raise self.fail("readiness_path", "must be relative to the prefix, like 'api/status'")

        default, maximum = self.resources(data["resources"])
        gpu = self.flag(data, "gpu", default=False)
        shareable = self.flag(data, "gpu_shareable", default=False)
        if not gpu and (default.gpus or maximum.gpus):
            raise self.fail("resources", "gpus must be 0 when gpu = false")
        if shareable and not gpu:
            raise self.fail("gpu_shareable", "needs gpu = true")

        pids_limit = self.integer(data, "pids_limit", default=DEFAULT_PIDS_LIMIT)
        if pids_limit <= 0:
            raise self.fail("pids_limit", "must be greater than 0")
        shm_size = self.size(data, "shm_size", default=DEFAULT_SHM_SIZE)
        home = self.text(data, "home", default=DEFAULT_HOME)
        if not home.startswith("/"):
            raise self.fail("home", f"must be an absolute path, got {home!r}")
        upstream = self.text(data, "upstream_base", default="") or None
        by_default = self.flag(data, "build_by_default", default=True)

        return EnvironmentManifest(
            name=name,
            description=self.text(data, "description"),
            version=self.text(data, "version"),
            port=port,
            command=tuple(command),
            prefix="keep" if prefix == "keep" else "strip",
            readiness_path=readiness,
            default=default,
            maximum=maximum,
            gpu=gpu,
            gpu_shareable=shareable,
            pids_limit=pids_limit,
            shm_size=shm_size,
            home=home,
            upstream_base=upstream,
            build_by_default=by_default,
        )

    def resources(self, table: object) -> tuple[Resources, Resources]:
        if not isinstance(table, dict):
            raise self.fail(
                "resources", "must be a table with [resources.default] and [resources.maximum]"
            )
        unknown = sorted(set(table) - {"default", "maximum"})
        if unknown:
            raise self.fail(f"resources.{unknown[0]}", "unknown key (allowed: default, maximum)")
        default = self.one_resources(table, "default")
        maximum = self.one_resources(table, "maximum")
        for field in ("cpus", "memory", "gpus"):
            if getattr(default, field) > getattr(maximum, field):
                raise self.fail(f"resources.default.{field}", "must not exceed resources.maximum")
        return default, maximum

    def one_resources(self, table: dict[str, Any], which: str) -> Resources:
        key = f"resources.{which}"
        values = table.get(which)
        if not isinstance(values, dict):
            raise self.fail(key, "is required, as a table with cpus and memory")
        unknown = sorted(set(values) - _RESOURCE_KEYS)
        if unknown:
            raise self.fail(f"{key}.{unknown[0]}", "unknown key (allowed: cpus, memory, gpus)")
        for required in ("cpus", "memory"):
            if required not in values:
                raise self.fail(f"{key}.{required}", "is required")
        cpus = values["cpus"]
        if isinstance(cpus, bool) or not isinstance(cpus, int | float):
            raise self.fail(f"{key}.cpus", f"must be a number of cores, got {cpus!r}")
        memory = self.size(values, "memory", label=f"{key}.memory")
        gpus = self.integer(values, "gpus", default=0, label=f"{key}.gpus")
        try:
            return Resources(cpus=float(cpus), memory=memory, gpus=gpus)
        except InvalidInput as exc:
            raise self.fail(key, exc.message) from None

    def text(self, data: dict[str, Any], key: str, *, default: str | None = None) -> str:
        value = data.get(key, default)
        if not isinstance(value, str) or (key in _REQUIRED and not value.strip()):
            raise self.fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def integer(
        self, data: dict[str, Any], key: str, *, default: int | None = None, label: str = ""
    ) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(label or key, f"must be an integer, got {value!r}")
        return value

    def flag(self, data: dict[str, Any], key: str, *, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def size(
        self, data: dict[str, Any], key: str, *, default: int | None = None, label: str = ""
    ) -> int:
        value = data.get(key, default)
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise self.fail(label or key, f"must be a size such as '512M' or '2G', got {value!r}")
        try:
            size = parse_memory(value)
        except InvalidInput:
            raise self.fail(
                label or key, f"must be a size such as '512M' or '2G', got {value!r}"
            ) from None
        if size <= 0:
            raise self.fail(label or key, "must be greater than 0")
        return size
