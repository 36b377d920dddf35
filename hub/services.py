"""Everything a running hub does besides answering requests, in the order it starts.

    running = Services(hub_services(settings, database=engine, executor=pool, ...))
    await running.start()        # the database first, the listeners last
    ...
    await running.close()        # the listeners first, the database last

Each entry is a ``hub.domain.services.Service``: a ``Step`` (an action at start
and/or at close) or a ``Loop`` (a task from start to close). The order is the
contract: a service may use any service started before it, until it is closed.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from hub.backends.bundle import BackendBundle, EngineDrain, EventSource
from hub.config import Settings
from hub.db.environments import SqlCatalog
from hub.domain.activity import ActivityStore, ActivityTracker, flush_forever
from hub.domain.catalog import seed_catalog
from hub.domain.servers import Backend
from hub.domain.services import Loop, Service, Step
from hub.domain.storage import StorageMeter
from hub.domain.workspaces import Workspaces
from hub.images.manifest import shipped_manifests


def hub_services(
    settings: Settings,
    *,
    database: AsyncEngine,
    executor: Executor,
    bundle: BackendBundle,
    workspaces: Workspaces,
    catalog: SqlCatalog,
    meter: StorageMeter,
    activity: ActivityTracker,
    activity_store: ActivityStore,
    web: Service,
) -> list[Service]:
    """The hub's services in start order; each closes after every one started after it."""
    backend, interval = bundle.backend, settings.quota.storage_interval
    # OOM kills that the engine does not report, read from the cgroups (local Docker).
    extra = [Loop("oom-counters", following(workspaces, events)) for events in bundle.extra_events]
    return [
        Step("database", end=database.dispose),
        # Closed once nothing else may call the engine: calls under way finish first.
        EngineDrain(executor, release=bundle.release),
        *bundle.services,  # the engine's own: the host firewall
        Step("catalog-seed", begin=lambda: seed_from_images(catalog, bundle)),
        Step("backend", end=backend.close),
        # Reconcile rows, containers and routes; at close, cancel launches in flight.
        Step("workspaces", begin=workspaces.reconcile, end=workspaces.close),
        Loop("engine-events", workspaces.watch_engine),
        Loop("storage-meter", lambda: meter.run(interval), after=bundle.volumes.close),
        Loop("activity", lambda: flush_forever(activity, activity_store, tick=5.0)),
        *extra,
        Loop("runtime-volumes", lambda: prepare_runtime(catalog, backend)),
        web,  # the listeners: closed first, so that no request arrives while the rest closes
    ]


def following(
    workspaces: Workspaces, events: EventSource
) -> Callable[[], Coroutine[Any, Any, None]]:
    """A loop's work: follow one more stream of engine events."""
    return lambda: workspaces.follow_engine(events())


async def seed_from_images(catalog: SqlCatalog, bundle: BackendBundle) -> None:
    """Seed the catalog with the built images of the environments shipped with labdock."""
    await seed_catalog(catalog, bundle.images, shipped_manifests())


async def prepare_runtime(catalog: SqlCatalog, backend: Backend) -> None:
    """Check what the backend prepared for the launchable images (runtime volumes)."""
    offered = [env.image for env in await catalog.all() if env.launchable]
    await backend.prepare_runtime(offered, only_copied=True)
