"""catalog versions and team visibility

Every environment keeps each image it has had as a row of
``environment_versions`` (pinned by digest, never deleted); the environment's
own ``image``/``image_digest``/``version`` columns name the current one.
``environment_teams`` lists the teams an environment is offered to (none: all
users). Existing rows get a first version made from what they pinned, and their
``team_id`` becomes their one listed team.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 23:40:00
"""
from __future__ import annotations

import re
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _first_label(image: str) -> str:
    """``labdock/python:5be0c1d24a7e`` -> ``5be0c1d24a7e``; anything else -> ``1``."""
    if image.startswith("sha256:"):
        return "1"
    _, colon, tag = image.rpartition(":")
    return tag if colon and "/" not in tag and _LABEL.match(tag) else "1"


def upgrade() -> None:
    with op.batch_alter_table('environments', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('source', sa.String(length=16), server_default='manifest', nullable=False)
        )
        batch_op.add_column(
            sa.Column('customized', sa.Boolean(), server_default=sa.false(), nullable=False)
        )

    op.create_table('environment_teams',
    sa.Column('environment_id', sa.Integer(), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['environment_id'], ['environments.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('environment_id', 'team_id')
    )
    with op.batch_alter_table('environment_teams', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_environment_teams_team_id'), ['team_id'], unique=False
        )

    op.create_table('environment_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('environment_id', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('image', sa.String(length=255), nullable=False),
    sa.Column('digest', sa.String(length=128), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['environment_id'], ['environments.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('environment_id', 'digest', name='uq_environment_versions_digest'),
    sa.UniqueConstraint('environment_id', 'label', name='uq_environment_versions_label')
    )
    with op.batch_alter_table('environment_versions', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_environment_versions_environment_id'), ['environment_id'], unique=False
        )

    _copy_existing_rows()


def _copy_existing_rows() -> None:
    """A first version for each environment already pinned, and its team as its one team."""
    conn = op.get_bind()
    environments = sa.table(
        'environments',
        sa.column('id', sa.Integer()),
        sa.column('team_id', sa.Integer()),
        sa.column('image', sa.String()),
        sa.column('image_digest', sa.String()),
        sa.column('version', sa.String()),
        sa.column('manifest', sa.JSON()),
        sa.column('created', sa.DateTime(timezone=True)),
    )
    versions = sa.table(
        'environment_versions',
        sa.column('environment_id', sa.Integer()),
        sa.column('label', sa.String()),
        sa.column('image', sa.String()),
        sa.column('digest', sa.String()),
        sa.column('manifest', sa.JSON()),
        sa.column('created', sa.DateTime(timezone=True)),
    )
    teams = sa.table(
        'environment_teams', sa.column('environment_id', sa.Integer()), sa.column('team_id', sa.Integer())
    )
    for row in conn.execute(sa.select(environments)).mappings().all():
        label = _first_label(row['image'])
        doc = dict(row['manifest'] or {})
        doc.setdefault('contents', row['version'] or '')
        conn.execute(
            versions.insert().values(
                environment_id=row['id'],
                label=label,
                image=row['image'],
                digest=row['image_digest'] or row['image'],
                manifest=doc,
                created=row['created'] or datetime.now(UTC),
            )
        )
        conn.execute(
            environments.update().where(environments.c.id == row['id']).values(version=label)
        )
        if row['team_id'] is not None:
            conn.execute(teams.insert().values(environment_id=row['id'], team_id=row['team_id']))


def downgrade() -> None:
    with op.batch_alter_table('environment_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_environment_versions_environment_id'))

    op.drop_table('environment_versions')
    with op.batch_alter_table('environment_teams', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_environment_teams_team_id'))

    op.drop_table('environment_teams')
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): a batch rebuild of this table
    # would, with foreign keys on, set every server's environment_id to NULL.
    op.drop_column('environments', 'customized')
    op.drop_column('environments', 'source')
