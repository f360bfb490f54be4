"""Drop ``ix_alerts_rule_id`` (issue 19): ``ix_alerts_rule_severity`` (rule_id, severity) serves every
query it served — a B-tree's leading column (rule equality, the rule filter's page and count, the
loose index scan of the filter drop-down's rule ids) on PostgreSQL and SQLite — so it only cost an
index insert per stored alert.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_alerts_rule_id", table_name="alerts")


def downgrade() -> None:
    op.create_index("ix_alerts_rule_id", "alerts", ["rule_id"])
