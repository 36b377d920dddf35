"""API token ids are never reused

Tokens are now listed and revoked by id (``DELETE /hub/api/users/{name}/tokens/{id}``),
so an id must keep naming one token: SQLite hands a deleted last row's id to the
next insert unless the table is AUTOINCREMENT, so ``api_tokens`` is rebuilt with
it there, rows kept. PostgreSQL sequences never reuse ids: nothing to do.
Nothing references ``api_tokens``, so the rebuild breaks no foreign key.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 13:30:00
"""
from __future__ import annotations

from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != 'sqlite':
        return
    with op.batch_alter_table(
        'api_tokens',
        schema=None,
        recreate='always',
        table_kwargs={'sqlite_autoincrement': autoincrement},
    ):
        pass


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
