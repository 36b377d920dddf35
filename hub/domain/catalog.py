"""Environments a user may launch, their versions, and how a launch request becomes resources.

    env = await launch_target(catalog, "jupyter", None, admin=False, team_ids=frozenset({3}))
    resources = choose_resources(env, launch_request({"environment": "jupyter", "cpus": 2}))
    old = await launch_target(catalog, "jupyter", "5be0c1d24a7e", admin=False, team_ids=...)

An environment is a name and a policy (description, default and maximum
resources, enabled, retired, the teams it is offered to) over a list of
versions. A version is one image, pinned by its digest, with how to run it
(port, command, prefix style, readiness path): a manifest snapshot. Versions
are never deleted, so a team can relaunch exactly what it ran last month.

``EnvironmentManifest`` is what a version is made from (an environment folder's
``manifest.toml`` or an admin's request, parsed by ``hub.domain.manifest``), and
``Environment`` is one version as the catalog stores it; both take their runtime
defaults from here (``DEFAULT_SHM_SIZE`` and the others), and ``manifest_of``
turns the second back into the first.

Launching never falls back to "any image": an environment that is unknown,
disabled, retired or not offered to the user, and a version the environment
never had, are refused by name (the class of CVE-2023-48311 in DockerSpawner).
Servers already running when their environment is disabled or retired keep
running; only new launches and restarts are refused.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from hub.domain.errors import Forbidden, InvalidInput, NotFound
from hub.domain.resources import MIN_CPUS, MIN_MEMORY, Resources, format_memory, parse_memory

log = logging.getLogger(__name__)

_SERVER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}\Z")
ENVIRONMENT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
# A version label is also a valid Docker tag, so each version can be kept as one.
VERSION_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# A digest may be shortened to its first 12 hex digits, as `docker images` shows it.
SHORT_DIGEST = 12
LAUNCH_KEYS = frozenset({"environment", "version", "cpus", "memory", "gpus"})
# Bounds on what an admin may set, so that no launch can overflow a column.
MAX_CPUS = 4096
MAX_MEMORY = 2**50
MAX_GPUS = 1024
# What a version gets when its manifest (or an admin's request) leaves a setting out.
DEFAULT_PIDS_LIMIT = 1024
DEFAULT_SHM_SIZE = 64 * 1024**2  # Docker's own default for /dev/shm
DEFAULT_HOME = "/home/analyst"

Prefix = Literal["keep", "strip"]


@dataclass(frozen=True)
class EnvironmentManifest:
    """One environment version as declared: the app, its URL handling and its limits.

    ``version`` is the text that says what the image holds (``contents`` once
    stored). ``prefix`` says whether the proxy keeps ``/user/<name>/<server>/`` in
    the path it forwards (the app is told its prefix in ``LABDOCK_PREFIX``) or
    strips it. ``readiness_path`` is relative to that prefix.
    ``build_by_default = false`` leaves the image out of a bare
    ``labdock images build`` (one too big for every machine, like the CUDA
    build of TensorFlow); naming it builds it.
    """

    name: str
    description: str
    version: str
    port: int
    command: tuple[str, ...]
    prefix: Prefix
    readiness_path: str
    default: Resources
    maximum: Resources
    gpu: bool = False
    gpu_shareable: bool = False
    pids_limit: int = DEFAULT_PIDS_LIMIT
    shm_size: int = DEFAULT_SHM_SIZE
    home: str = DEFAULT_HOME
    upstream_base: str | None = None
    build_by_default: bool = True


@dataclass(frozen=True)
class Environment:
    """One launchable environment at one version, pinned to an image by its digest.

    ``image`` is what the engine runs (the digest when known). ``version`` is the
    version's label and ``current`` whether it is the environment's current one.
    ``teams`` are the ids of the teams it is offered to; empty means everyone.
    """

    id: int
    name: str
    description: str
    version: str
    image: str
    port: int
    command: tuple[str, ...]
    keep_prefix: bool
    readiness_path: str
    default: Resources
    maximum: Resources
    gpu: bool = False
    gpu_shareable: bool = False
    pids_limit: int = DEFAULT_PIDS_LIMIT
    shm_size: int = DEFAULT_SHM_SIZE
    home: str = DEFAULT_HOME
    teams: frozenset[int] = frozenset()
    enabled: bool = True
    retired: bool = False
    contents: str = ""
    current: bool = True

    @property
    def launchable(self) -> bool:
        return self.enabled and not self.retired

    def offered_to(self, *, admin: bool, team_ids: frozenset[int]) -> bool:
        """Admins see every environment; others those with no team list or one of theirs."""
        return admin or not self.teams or bool(self.teams & team_ids)


def manifest_of(env: Environment) -> EnvironmentManifest:
    """The manifest of an environment's version: how to run it, as it was declared."""
    return EnvironmentManifest(
        name=env.name,
        description=env.description,
        version=env.contents or env.version,
        port=env.port,
        command=env.command,
        prefix="keep" if env.keep_prefix else "strip",
        readiness_path=env.readiness_path,
        default=env.default,
        maximum=env.maximum,
        gpu=env.gpu,
        gpu_shareable=env.gpu_shareable,
        pids_limit=env.pids_limit,
        shm_size=env.shm_size,
        home=env.home,
    )


@dataclass(frozen=True)
class Version:
    """One image an environment has had."""

    label: str
    image: str
    digest: str
    contents: str
    created: datetime
    current: bool


@dataclass(frozen=True)
class EnvironmentInfo:
    """An environment as admins see it: its current version, team names and every version."""

    environment: Environment
    teams: tuple[str, ...]
    source: str
    customized: bool
    versions: tuple[Version, ...] = field(default_factory=tuple)


def check_server_name(name: str) -> str:
    """``""`` is the default server; others are short lowercase words."""
    if name == "":
        return name
    if not isinstance(name, str) or not _SERVER_NAME.match(name):
        raise InvalidInput(
            "server name: 1 to 32 characters of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def shown(value: object, limit: int = 40) -> str:
    """A value from a request, quoted and cut short, safe to put in a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_environment_name(name: object) -> str:
    """An environment name: lowercase letters, digits and '-', at most 63."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("environment: name the environment to launch")
    if not ENVIRONMENT_NAME.match(name):
        raise InvalidInput(
            f"environment {shown(name)}: names are 1 to 63 characters of a-z, 0-9 and '-'"
        )
    return name


def check_version_ref(ref: object) -> str:
    """A version as a launch names it: its label, or its digest (``sha256:``, 12+ hex)."""
    if not isinstance(ref, str) or not ref:
        raise InvalidInput("version: expected a version label or an image digest")
    if ref.startswith("sha256:"):
        if not re.fullmatch(rf"sha256:[0-9a-f]{{{SHORT_DIGEST},64}}", ref):
            raise InvalidInput(
                f"version {shown(ref)}: a digest is sha256: and at least "
                f"{SHORT_DIGEST} lowercase hex digits"
            )
        return ref
    if not VERSION_LABEL.match(ref):
        raise InvalidInput(
            f"version {shown(ref)}: labels are 1 to 64 characters of letters, digits, '.', "
            "'_' and '-'"
        )
    return ref


def check_label(label: object) -> str:
    """A new version label (a Docker tag, so that the version's image can carry it)."""
    if not isinstance(label, str) or not VERSION_LABEL.match(label) or label.startswith("sha256"):
        raise InvalidInput(
            f"version {shown(label)}: labels are 1 to 64 characters of letters, digits, '.', "
            "'_' and '-', not starting with sha256"
        )
    return label


def check_policy(env_name: str, default: Resources, maximum: Resources, gpu: bool) -> None:
    """Default resources within the maximum, and GPUs only where the image can use them."""
    for key in ("cpus", "memory", "gpus"):
        if getattr(default, key) > getattr(maximum, key):
            raise InvalidInput(f"resources.default.{key}: must not exceed resources.maximum")
    if default.memory < MIN_MEMORY:
        raise InvalidInput(f"resources.default.memory: at least {format_memory(MIN_MEMORY)}")
    if default.cpus < MIN_CPUS:
        # Less is no CPU limit at all to the engine: such a default could never launch.
        raise InvalidInput(f"resources.default.cpus: at least {MIN_CPUS:g}")
    if maximum.cpus > MAX_CPUS or maximum.memory > MAX_MEMORY or maximum.gpus > MAX_GPUS:
        raise InvalidInput(
            f"resources.maximum: at most {MAX_CPUS} CPUs, 1 PiB of memory and {MAX_GPUS} GPUs"
        )
    if not gpu and (default.gpus or maximum.gpus):
        raise InvalidInput(
            f"resources: {env_name}'s version cannot use GPUs, so its gpus must be 0"
        )


@dataclass(frozen=True)
class ResourcesChange:
    """Some of an environment's default or maximum resources; ``None`` keeps the figure."""

    cpus: float | None = None
    memory: int | None = None
    gpus: int | None = None

    def over(self, current: Resources) -> Resources:
        """The resources with these figures changed."""
        return Resources(
            cpus=current.cpus if self.cpus is None else self.cpus,
            memory=current.memory if self.memory is None else self.memory,
            gpus=current.gpus if self.gpus is None else self.gpus,
        )


def resources_change(value: object, key: str) -> ResourcesChange:
    """``{"cpus": 2, "memory": "4G", "gpus": 0}`` from an admin's request; omitted keys stay."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{key}: expected an object with cpus, memory and gpus")
    unknown = set(value) - {"cpus", "memory", "gpus"}
    if unknown:
        raise InvalidInput(f"{key}: unknown field {shown(sorted(map(str, unknown))[0])}")
    cpus = _optional_number(value, "cpus")
    memory = None
    if "memory" in value:
        raw_memory = value["memory"]
        if (
            isinstance(raw_memory, bool)
            or not isinstance(raw_memory, int | str)
            or len(str(raw_memory)) > 32
        ):
            raise InvalidInput(f"{key}.memory: expected a size such as 4G")
        memory = parse_memory(raw_memory, what=f"{key}.memory")
    gpus = _optional_number(value, "gpus")
    if gpus is not None and (gpus != int(gpus) or not 0 <= gpus <= MAX_GPUS):
        raise InvalidInput(f"{key}.gpus: expected a whole number from 0 to {MAX_GPUS}")
    if cpus is not None and not 0 < cpus <= MAX_CPUS:
        raise InvalidInput(f"{key}.cpus: must be more than 0 and at most {MAX_CPUS}")
    if memory is not None and not 0 < memory <= MAX_MEMORY:
        raise InvalidInput(f"{key}.memory: must be more than 0 and at most 1 PiB")
    return ResourcesChange(cpus=cpus, memory=memory, gpus=None if gpus is None else int(gpus))


def _optional_number(body: Mapping[str, object], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInput(f"{key}: expected a number, got {shown(value)}")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise InvalidInput(f"{key}: expected a number, got {shown(value)}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise InvalidInput(f"{key}: expected a finite number")
    return number


@dataclass(frozen=True)
class LaunchRequest:
    """What a launch asks for: an environment, and ``None`` for its default (its current
    version, its default resources). Memory in bytes.

    ``options`` are the choices as the request gave them (the server's ``user_options``).
    """

    environment: str
    version: str | None = None
    cpus: float | None = None
    memory: int | None = None
    gpus: int | None = None
    options: Mapping[str, str | float | None] = field(default_factory=dict, compare=False)


def launch_request(body: Mapping[str, object]) -> LaunchRequest:
    """A launch's JSON body (``{"environment": "jupyter", "memory": "4G"}``), checked.

    Each refusal is an ``InvalidInput`` naming the field; whether the environment
    exists, and the bounds of its resources, are checked where it is launched.
    """
    environment = check_environment_name(body.get("environment"))
    raw_version = body.get("version")
    version = check_version_ref(raw_version) if raw_version is not None else None
    unknown = set(body) - LAUNCH_KEYS
    if unknown:
        raise InvalidInput(
            f"unknown launch field(s): {', '.join(sorted(map(str, unknown)))[:200]}; "
            f"expected {', '.join(sorted(LAUNCH_KEYS))}"
        )
    cpus = _optional_number(body, "cpus")
    raw_memory = body.get("memory")
    if raw_memory is None:
        memory = None
    elif isinstance(raw_memory, int | str) and not isinstance(raw_memory, bool):
        memory = parse_memory(raw_memory)
    else:
        raise InvalidInput(f"memory: expected a size such as 4G, got {shown(raw_memory)}")
    gpus = _optional_number(body, "gpus")
    if gpus is not None and (gpus != int(gpus) or gpus < 0):
        raise InvalidInput(f"gpus: expected a whole number, got {shown(body.get('gpus'))}")
    options: dict[str, str | float | None] = {}
    for key in ("version", "cpus", "memory", "gpus"):
        if key in body:
            value = body[key]
            # Each was checked above: a string, a number, or null.
            assert value is None or isinstance(value, str | int | float)
            options[key] = value
    return LaunchRequest(
        environment=environment,
        version=version,
        cpus=cpus,
        memory=memory,
        gpus=None if gpus is None else int(gpus),
        options=options,
    )


def choose_resources(env: Environment, request: LaunchRequest) -> Resources:
    """Fill omitted figures from the environment's defaults and check its maximum."""
    cpus = env.default.cpus if request.cpus is None else request.cpus
    memory = env.default.memory if request.memory is None else request.memory
    gpus = env.default.gpus if request.gpus is None else request.gpus
    if cpus <= 0 or cpus > env.maximum.cpus:
        raise InvalidInput(
            f"cpus: {env.name} takes more than 0 and at most {env.maximum.cpus:g} CPUs, "
            f"got {cpus:g}"
        )
    if memory < 64 * 1024**2 or memory > env.maximum.memory:
        raise InvalidInput(
            f"memory: {env.name} takes 64 MiB to {format_memory(env.maximum.memory)}, "
            f"got {format_memory(memory)}"
        )
    if gpus and not env.gpu:
        raise InvalidInput(f"gpus: {env.name} cannot use GPUs; choose a GPU environment")
    if gpus > env.maximum.gpus:
        raise InvalidInput(f"gpus: {env.name} takes at most {env.maximum.gpus} GPUs, got {gpus}")
    return Resources(cpus=cpus, memory=memory, gpus=gpus)


class Catalog(Protocol):
    """Where environments are stored (the database, seeded from ``images/``)."""

    async def get(self, name: str, version: str | None = None) -> Environment | None:
        """The environment at ``version`` (label or digest; None: its current one).

        ``None`` when there is no such environment; ``NotFound`` when it never had
        that version.
        """

    async def by_id(self, environment_id: int, digest: str = "") -> Environment | None:
        """The environment at the version with ``digest`` (its current one if none has it)."""

    async def visible_to(
        self, team_ids: frozenset[int], *, admin: bool = False
    ) -> list[Environment]:
        """The launchable environments, at their current versions, offered to these teams."""


async def launch_target(
    catalog: Catalog,
    name: str,
    version: str | None,
    *,
    admin: bool,
    team_ids: frozenset[int],
) -> Environment:
    """The environment and version a launch asks for, or a refusal that says why.

    Each refusal is a 4xx: a malformed name or version (400), an environment
    not in the catalog or a version it never had (404), one not offered to this
    user's teams (403), one disabled or retired (400). Nothing falls back to a
    default image.
    """
    name = check_environment_name(name)
    ref = check_version_ref(version) if version is not None else None
    env = await catalog.get(name, ref)
    if env is None:
        raise NotFound(f"environment {name!r} is not in the catalog")
    if not env.offered_to(admin=admin, team_ids=team_ids):
        raise Forbidden(
            f"environment {name!r} is offered only to certain teams, and none of them is yours; "
            "ask an admin"
        )
    if not env.launchable:
        state = "retired" if env.retired else "disabled"
        raise InvalidInput(f"environment {name!r} is {state} and cannot be launched")
    return env


@dataclass(frozen=True)
class BuiltImage:
    """An environment's image as ``labdock images build`` made it: its tag and digest (id)."""

    tag: str
    digest: str


@dataclass(frozen=True)
class SeedImage:
    """A built environment image: its manifest, its tag and its digest (image id)."""

    manifest: EnvironmentManifest
    tag: str
    digest: str


class ImageStore(Protocol):
    """The images on the engine, as the catalog needs them (no registry: nothing is pulled)."""

    async def built(self, environment: str) -> BuiltImage | None:
        """The image built from the environment's current files, or None when not built yet."""

    async def resolve(self, reference: str) -> str | None:
        """The digest (image id) of a local image, or None when the engine has no such image."""

    async def pin(self, environment: str, label: str, digest: str) -> str:
        """Tag the image (``labdock/<hub id>/<environment>:<label>``) so that pruning keeps it;
        return the tag.

        ``Conflict`` when that tag already names another image.
        """


class SeedableCatalog(Protocol):
    """A catalog that records built images as versions (``hub.db.environments.SqlCatalog``)."""

    async def seed(self, built: Mapping[str, SeedImage]) -> list[tuple[str, str]]:
        """Record each built image as its environment's version; return the new (name, label)."""


async def seed_catalog(
    catalog: SeedableCatalog,
    images: ImageStore,
    manifests: Mapping[str, EnvironmentManifest],
) -> list[tuple[str, str]]:
    """Record every built environment image in the catalog, pinned by image id.

    A new image becomes a new version; earlier versions stay. An image that
    cannot be looked up (the engine is down, the image is gone) changes nothing:
    the catalog keeps its rows. Returns the new versions as (name, label).
    """
    found: dict[str, SeedImage] = {}
    for name, manifest in manifests.items():
        try:
            image = await images.built(name)
        except Exception as exc:
            log.warning("cannot look up the image of %s: %s", name, exc)
            continue
        if image is not None:
            found[name] = SeedImage(manifest, image.tag, image.digest)
    added = await catalog.seed(found) if found else []
    for name, label in added:
        log.info("environment %s: new version %s is now current", name, label)
    return added
