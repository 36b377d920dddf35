"""What admission would grant a user right now, per environment: the launch form's bounds.

    limits = LaunchLimits(repo=servers, catalog=catalog, teams=teams, policy=policy)
    report = await limits.for_user(alice)
    report.offers[0].offer.memory        # the most memory a new server of that env gets now
    report.user.limits, report.user.usage

The view (quotas, what every active server holds, GPUs in use) is read by the
same repository method, and turned into scopes by the same function, as the
claim that admission runs in its transaction; the offer per environment then
comes from ``hub.domain.offers``, built on admission's own ``headroom`` and
``admit``. So a form that offers only these bounds is never refused for size.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.domain.accounts import TeamDirectory, User
from hub.domain.catalog import Catalog, Environment
from hub.domain.errors import QuotaExceeded
from hub.domain.offers import Offer, free_gpu_count, offer_for
from hub.domain.quotas import Limits, Scope
from hub.domain.records import WorkspaceRepo
from hub.domain.workspaces import Policy, StorageGate, admission_scopes


@dataclass(frozen=True)
class EnvironmentOffer:
    """One environment the user may launch, and the most a new server of it gets now."""

    environment: Environment
    offer: Offer


@dataclass(frozen=True)
class LaunchLimitsReport:
    """The offers, and the quotas they come from: the user's and every team's."""

    offers: tuple[EnvironmentOffer, ...]
    user: Scope
    # Every team of the user, with a quota of its own or not (then unlimited), by name.
    teams: tuple[tuple[str, Scope], ...]


class LaunchLimits:
    """Answers "what would admission grant right now" with admission's own code."""

    def __init__(
        self,
        *,
        repo: WorkspaceRepo,
        catalog: Catalog,
        teams: TeamDirectory,
        policy: Policy,
        storage: StorageGate | None = None,
    ) -> None:
        self._repo = repo
        self._catalog = catalog
        self._teams = teams
        self._policy = policy
        self._storage = storage

    async def for_user(self, user: User) -> LaunchLimitsReport:
        """The launchable environments visible to ``user``, each with its offer now."""
        view = await self._repo.admission_view(user.id)
        user_scope, team_scopes, host = admission_scopes(view, self._policy)
        storage_refusal: str | None = None
        if self._storage is not None:
            try:
                await self._storage.admit(user)
            except QuotaExceeded as exc:
                storage_refusal = exc.message
        team_ids = await self._teams.team_ids_of(user.id)
        visible = await self._catalog.visible_to(team_ids, admin=user.is_admin)
        offers = []
        for env in (e for e in visible if e.launchable):
            free = free_gpu_count(
                self._policy.gpu_inventory, dict(view.gpus_in_use), shareable=env.gpu_shareable
            )
            offer = offer_for(env, user=user_scope, teams=team_scopes, host=host, free_gpus=free)
            if storage_refusal is not None:
                offer = Offer(env.name, 0.0, 0, 0, False, storage_refusal, offer.limited_by)
            offers.append(EnvironmentOffer(env, offer))
        shown = tuple(
            (t.name, Scope(f"team '{t.name}' quota", t.limits or Limits(), t.usage))
            for t in view.teams
        )
        return LaunchLimitsReport(offers=tuple(offers), user=user_scope, teams=shown)
