"""catalog versions and team visibility

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 23:40:00
"""
from __future__ import annotations

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
