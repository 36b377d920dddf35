"""Installation facts kept in the database, such as the hub id.

    hub_id = await hub_identity(sessions)   # "h3f9a2c1", the same on every start

The hub id prefixes container, volume and network names, so that two hubs on
one engine never touch each other's containers. It lives in the database
because the database is what owns the rows those containers belong to.
"""

from __future__ import annotations

import secrets

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub.db.schema import MetaRow


async def hub_identity(sessions: async_sessionmaker[AsyncSession]) -> str:
    """This installation's hub id, created on first use."""
    async with sessions() as s:
        row = await s.get(MetaRow, "hub_id")
        if row is not None:
            return row.value
    candidate = "h" + secrets.token_hex(4)
    try:
        async with sessions.begin() as s:
            s.add(MetaRow(key="hub_id", value=candidate))
    except IntegrityError:
        pass  # another process won the race; read its id below
    async with sessions() as s:
        row = await s.get(MetaRow, "hub_id")
        assert row is not None
        return row.value
