"""Keep hypothetical screening apart: ``evaluations.hypothetical``.

A batch screening with ``--assume-order`` puts an order nobody wrote on every patient; its
alerts are "what would fire", not events. They are flagged so the review queue and analytics
leave them out unless asked for. Existing rows are backfilled from their batch run's
``params.assumed_order``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("hypothetical", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index("ix_evaluations_hypothetical_as_of", "evaluations", ["hypothetical", "as_of"])
    bind = op.get_bind()
    assumed = ("jsonb_typeof(params->'assumed_order') = 'string'" if bind.dialect.name == "postgresql"
               else "json_type(params, '$.assumed_order') = 'text'")
    op.execute(
        "UPDATE evaluations SET hypothetical = true WHERE source = 'batch' AND batch_run_id IN "
        f"(SELECT id FROM batch_runs WHERE {assumed})"
    )


def downgrade() -> None:
    op.drop_index("ix_evaluations_hypothetical_as_of", table_name="evaluations")
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("hypothetical")
