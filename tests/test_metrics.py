"""``GET /hub/metrics``: Prometheus text for admins, refused to everyone else."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningHub
from tests.test_admin_api import token_for


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_admin_token_with_read_metrics_scrapes_prometheus_text(
    hub_server: RunningHub,
) -> None:
    token = await token_for(hub_server, "root", {"read:metrics"}, admin=True)
    await hub_server.fetch("/hub/api/")  # one request to count
    response = await hub_server.fetch(
        "/hub/metrics", headers={"Authorization": f"token {token}"}
    )
    assert response.code == 200, response.body
    assert response.headers["Content-Type"].startswith("text/plain")
    found = samples(response.body)
    assert found[("labdock_reserved", (("resource", "cpus"),))] == 0
    counted = [
        value
        for (name, labels), value in found.items()
        if name == "labdock_http_requests_total" and ("handler", "VersionHandler") in labels
    ]
    assert counted == [1.0]
    # The fast path counts what it relays itself (nothing here: no server runs).
    assert found[("labdock_proxy_relayed_requests_total", ())] == 0


async def test_metrics_are_refused_without_credentials_the_scope_or_admin(
    hub_server: RunningHub,
) -> None:
    anonymous = await hub_server.fetch("/hub/metrics")
    assert anonymous.code == 401
    assert anonymous.headers["Content-Type"].startswith("application/json")
    no_scope = await token_for(hub_server, "root", {"read:servers"}, admin=True)
    refused = await hub_server.fetch(
        "/hub/metrics", headers={"Authorization": f"token {no_scope}"}
    )
    assert refused.code == 403 and b"read:metrics" in refused.body
    analyst = await token_for(hub_server, "ada", {"read:metrics"})
    refused = await hub_server.fetch(
        "/hub/metrics", headers={"Authorization": f"token {analyst}"}
    )
    assert refused.code == 403 and b"only admins" in refused.body
