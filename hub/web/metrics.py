"""Prometheus metrics at ``GET /hub/metrics``: what runs, what is reserved, how the hub answers.

    metrics = HubMetrics(capacity=Limits(cpus=16, memory=64 << 30))
    app = Application(routes, log_function=metrics.log_request)
    # curl -H "Authorization: token $ADMIN_TOKEN" http://hub/hub/metrics

Server gauges are read from the database at scrape time, so they are right after a
hub restart and cost nothing between scrapes. Request counters are labelled by
handler class, never by path, so user and server names cannot blow up cardinality.
Scraping needs an admin: a session, or a token that holds ``read:metrics``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import tornado.web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from tornado.log import access_log

import hub
from hub.domain.errors import Forbidden
from hub.domain.quotas import Limits
from hub.domain.servers import ServerState
from hub.web.base import BaseHandler
from hub.web.deps import WebDeps

# States whose servers hold a reservation against quotas and the host.
HOLDING = (ServerState.STARTING, ServerState.RUNNING, ServerState.STOPPING)
ACTIVE_WINDOW = timedelta(hours=1)


class _Relayed(Collector):
    """The front's count of requests it relayed itself, read at scrape time (it costs
    the fast path one integer increment, not a Prometheus call)."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "labdock_proxy_relayed_requests",
            "Requests to user servers relayed by the proxy's fast path (the rest are "
            "counted in labdock_http_requests under ProxyHandler)",
        )
        family.add_metric([], self._count())
        yield family


class HubMetrics:
    """One hub's metrics, in a registry of its own (tests build many hubs per process)."""

    def __init__(self, capacity: Limits, relayed: Callable[[], int] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.capacity = capacity
        if relayed is not None:
            r.register(_Relayed(relayed))
        Gauge("labdock_info", "labdock version", ["version"], registry=r).labels(
            hub.__version__
        ).set(1)
        self.requests = PromCounter(
            "labdock_http_requests",
            "HTTP requests answered by the hub (proxied requests included)",
            ["method", "handler", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "labdock_http_request_duration_seconds",
            "Time to answer an HTTP request, by handler",
            ["handler"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.servers = Gauge(
            "labdock_servers",
            "Servers by state and environment",
            ["state", "environment"],
            registry=r,
        )
        self.reserved = Gauge(
            "labdock_reserved",
            "Resources held by starting and running servers",
            ["resource"],
            registry=r,
        )
        self.host = Gauge(
            "labdock_host_capacity",
            "Allocatable capacity of the host (after overcommit)",
            ["resource"],
            registry=r,
        )
        self.active_users = Gauge(
            "labdock_active_users",
            "Users with a server that saw a request in the last hour",
            registry=r,
        )
        self.scrape_seconds = Gauge(
            "labdock_metrics_scrape_seconds",
            "Time spent reading the database for this scrape",
            registry=r,
        )
        for name, value in (
            ("cpus", capacity.cpus),
            ("memory_bytes", capacity.memory),
            ("gpus", capacity.gpus),
        ):
            if value is not None:
                self.host.labels(name).set(value)

    def log_request(self, handler: tornado.web.RequestHandler) -> None:
        """Tornado's ``log_function``: count the request, then log it as tornado would."""
        status = handler.get_status()
        name = type(handler).__name__
        self.requests.labels(handler.request.method or "", name, str(status)).inc()
        self.latency.labels(name).observe(handler.request.request_time())
        # What tornado logs when no log_function is set (calling it would recurse here).
        level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
        access_log.log(
            level,
            "%d %s %.2fms",
            status,
            handler._request_summary(),
            1000.0 * handler.request.request_time(),
        )

    async def refresh(self, handler: BaseHandler) -> None:
        """Re-read the servers table into the gauges."""
        began = time.perf_counter()
        records = await handler.deps.servers.all()
        by_state: Counter[tuple[str, str]] = Counter()
        cpus = 0.0
        memory = 0
        gpus = 0
        active: set[int] = set()
        since = datetime.now(UTC) - ACTIVE_WINDOW
        for record in records:
            by_state[(record.state.value, record.environment)] += 1
            if record.state in HOLDING:
                cpus += record.resources.cpus
                memory += record.resources.memory
                gpus += record.resources.gpus
            if record.last_activity is not None and record.last_activity >= since:
                active.add(record.user_id)
        self.servers.clear()
        for (state, environment), count in by_state.items():
            self.servers.labels(state, environment).set(count)
        self.reserved.labels("cpus").set(cpus)
        self.reserved.labels("memory_bytes").set(memory)
        self.reserved.labels("gpus").set(gpus)
        self.active_users.set(len(active))
        self.scrape_seconds.set(time.perf_counter() - began)


class MetricsHandler(BaseHandler):
    """``GET /hub/metrics`` in Prometheus' text format."""

    def initialize(self, deps: WebDeps, metrics: HubMetrics | None = None) -> None:
        super().initialize(deps)
        assert metrics is not None, "hub.app passes the hub's metrics"
        self.metrics = metrics

    @property
    def is_api(self) -> bool:
        return True  # errors as JSON: the caller is a scraper, not a person

    async def get(self) -> None:
        user = self.require("read:metrics")
        if not user.is_admin:
            raise Forbidden("only admins may read the hub's metrics")
        await self.metrics.refresh(self)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.set_header("Cache-Control", "no-store")
        self.finish(generate_latest(self.metrics.registry))
