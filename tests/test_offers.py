"""What the launch form offers: never more than admission would grant (pure rules)."""

from __future__ import annotations

import itertools

import pytest

from hub.domain.catalog import Environment
from hub.domain.errors import QuotaExceeded
from hub.domain.offers import free_gpu_count, offer_for, scope_use
from hub.domain.quotas import Limits, Scope, Usage, admit
from hub.domain.resources import GiB, MiB, Resources


def env(**fields: object) -> Environment:
    values: dict[str, object] = dict(
        id=1,
        name="jupyter",
        description="JupyterLab",
        version="1",
        image="img",
        port=8888,
        command=(),
        keep_prefix=True,
        readiness_path="",
        default=Resources(cpus=1, memory=2 * GiB),
        maximum=Resources(cpus=4, memory=16 * GiB),
    )
    values.update(fields)
    return Environment(**values)  # type: ignore[arg-type]


HOST = Scope("this host's capacity", Limits(cpus=32, memory=128 * GiB, gpus=2), Usage())


def test_the_offer_is_the_environment_maximum_when_quotas_are_roomy() -> None:
    user = Scope("your quota", Limits(cpus=8, memory=32 * GiB, servers=3), Usage())
    offer = offer_for(env(), user=user, teams=[], host=HOST, free_gpus=0)
    assert offer.launchable and (offer.cpus, offer.memory, offer.gpus) == (4, 16 * GiB, 0)
    assert offer.limited_by == {}
    assert offer.choices["memory"][-1] == 16 * GiB and offer.choices["cpus"][-1] == 4
    assert offer.default == {"cpus": 1, "memory": 2 * GiB, "gpus": 0}
    assert offer.choices["gpus"] == [0]


def test_the_tightest_scope_bounds_each_resource_and_is_named() -> None:
    user = Scope("your quota", Limits(cpus=3, memory=32 * GiB), Usage(cpus=1, servers=1))
    team = Scope("team 'risk' quota", Limits(memory=6 * GiB), Usage(memory=5 * GiB))
    offer = offer_for(env(), user=user, teams=[team], host=HOST, free_gpus=0)
    assert (offer.cpus, offer.memory) == (2, 1 * GiB)
    assert offer.limited_by == {"cpus": "your quota", "memory": "team 'risk' quota"}
    assert offer.default["memory"] == 1 * GiB  # the preset shrinks to what fits
    assert 1 * GiB in offer.choices["memory"] and max(offer.choices["memory"]) == 1 * GiB


def test_nothing_is_offered_when_a_quota_is_full_and_the_reason_is_admissions() -> None:
    user = Scope("your quota", Limits(servers=2), Usage(servers=2))
    offer = offer_for(env(), user=user, teams=[], host=HOST, free_gpus=0)
    assert not offer.launchable and offer.choices == {}
    assert offer.reason is not None and "allows 2 servers at once" in offer.reason
    squeezed = Scope("your quota", Limits(memory=1 * GiB), Usage(memory=1 * GiB - 10 * MiB))
    offer = offer_for(env(), user=squeezed, teams=[], host=HOST, free_gpus=0)
    assert not offer.launchable and "left in your quota" in (offer.reason or "")


def test_gpus_are_offered_only_by_gpu_environments_and_only_free_ones() -> None:
    user = Scope("your quota", Limits(gpus=4), Usage())
    gpu_env = env(gpu=True, maximum=Resources(cpus=4, memory=16 * GiB, gpus=2))
    assert offer_for(gpu_env, user=user, teams=[], host=HOST, free_gpus=1).choices["gpus"] == [0, 1]
    assert offer_for(env(), user=user, teams=[], host=HOST, free_gpus=2).gpus == 0
    assert free_gpu_count(("0", "1"), {"0": 1}, shareable=False) == 1
    assert free_gpu_count(("0", "1"), {"0": 1}, shareable=True) == 2


@pytest.mark.parametrize(
    ("used_cpus", "used_memory", "team_memory"),
    list(itertools.product((0, 1.5, 3.75), (0, 3 * GiB, 7 * GiB), (None, 5 * GiB, 9 * GiB))),
)
def test_every_offered_choice_is_admitted(
    used_cpus: float, used_memory: int, team_memory: int | None
) -> None:
    user = Scope(
        "your quota",
        Limits(cpus=4, memory=8 * GiB, servers=5),
        Usage(cpus=used_cpus, memory=used_memory, servers=1),
    )
    teams = (
        [Scope("team 'risk' quota", Limits(memory=team_memory), Usage(memory=used_memory))]
        if team_memory
        else []
    )
    offer = offer_for(env(), user=user, teams=teams, host=HOST, free_gpus=0)
    if not offer.launchable:
        with pytest.raises(QuotaExceeded):
            admit(Resources(cpus=0.25, memory=64 * MiB), user=user, teams=teams, host=HOST)
        return
    for cpus, memory in itertools.product(offer.choices["cpus"], offer.choices["memory"]):
        admit(Resources(cpus=cpus, memory=memory), user=user, teams=teams, host=HOST)
    if "memory" in offer.limited_by:  # a quota, not the environment, set the maximum
        with pytest.raises(QuotaExceeded):
            admit(Resources(0.25, offer.memory + MiB), user=user, teams=teams, host=HOST)


def test_quota_use_for_display() -> None:
    scope = Scope("your quota", Limits(cpus=4, memory=None), Usage(cpus=1.5, memory=GiB))
    assert scope_use(scope)["cpus"] == {"used": 1.5, "limit": 4}
    assert scope_use(scope)["memory"] == {"used": GiB, "limit": None}
